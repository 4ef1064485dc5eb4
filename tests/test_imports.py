"""What importing the package costs: the workflow's main process (every ``snakemake`` call, and
the one inside every cluster job) reads the config without torch, xarray or scikit-learn,
which took about 7 of its 12 seconds when they were imported at the top."""

from __future__ import annotations

import subprocess
import sys

import pytest

import onepixel.data

HEAVY = ("torch", "torchvision", "xarray", "sklearn", "scipy", "matplotlib", "netCDF4", "pandas")


def _imported_after(statement: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after ``statement``."""
    probe = f"import sys\n{statement}\nprint(' '.join(name for name in {HEAVY!r} if name in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_the_modules_the_snakefile_imports_load_no_heavy_library():
    # workflow/Snakefile and workflow/rules/common.smk import these
    statement = (
        "from onepixel.config import read_config_file, validate_config\n"
        "from onepixel.errors import ConfigError\n"
        "from onepixel.data.cifar10_layout import cifar10_root_files\n"
        "from onepixel.stages import settings\n"
        "from onepixel.study import layout"
    )
    assert _imported_after(statement) == []


def test_the_dataset_names_load_only_what_they_need():
    assert _imported_after("from onepixel.data import DATASET_NAMES") == []
    assert "torchvision" not in _imported_after("from onepixel.data import load_dataset, read_cifar10_root")


@pytest.mark.parametrize("name", onepixel.data.__all__)
def test_every_public_dataset_name_resolves(name):
    value = getattr(onepixel.data, name)
    home = sys.modules[value.__module__] if callable(value) else onepixel.data
    assert (name in vars(home) and vars(home)[name] is value) or getattr(home, name) is value


def test_an_unknown_dataset_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'load_imagenet'"):
        onepixel.data.load_imagenet  # noqa: B018
