"""Where a study keeps its files: one directory per study, ``results/<study id>/``, owning everything it makes.

A study is one validated config. Its id is the dataset's name, or
``<dataset>-<study>`` when the config names the study (config key ``study``), and
everything the study makes lives under ``results/<study id>/``: its prepared
dataset (``data/``), models, attack results, cubes, analyses, figures, the
summary, the report, the jobs' logs and benchmarks. Two studies with different
ids therefore never write, read or invalidate each other's files; two configs
with the same id are the same study (a changed setting reruns what it affects).

Only verified downloads (``resources/raw/``, checked against their published
checksums, never modified) are shared between studies.

Command line: ``python -m onepixel.study --config config/test.yaml`` prints the
study's directory (``--report`` the report's path), for scripts and the Makefile.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onepixel.config import read_config_file, validate_config
from onepixel.errors import OnePixelError

#: the folder that holds every study's directory
RESULTS_ROOT = "results"


def study_id(cfg: Mapping[str, Any]) -> str:
    """``<dataset>`` or ``<dataset>-<study>``: the name of a study's directory under ``results/``."""
    dataset, name = cfg["dataset"]["name"], cfg.get("study") or ""
    return f"{dataset}-{name}" if name else dataset


@dataclass(frozen=True)
class StudyLayout:
    """The paths of one study, relative to the repository root (as the workflow names them)."""

    root: str  # results/<study id>

    @property
    def data(self) -> str:
        """The study's prepared dataset: ``data/train.nc`` and ``data/test.nc``."""
        return f"{self.root}/data"

    @property
    def logs(self) -> str:
        """Every job's log (``<rule>[_<model>].log``); ``logs/benchmarks/`` holds Snakemake's benchmark files."""
        return f"{self.root}/logs"

    @property
    def report(self) -> str:
        """The study's HTML report (``snakemake --report``)."""
        return f"{self.root}/report.html"

    def dataset_file(self, split: str) -> str:
        """``data/{split}.nc`` of the study (``split``: train or test)."""
        return f"{self.data}/{split}.nc"


def layout(cfg: Mapping[str, Any]) -> StudyLayout:
    """The :class:`StudyLayout` of a validated config."""
    return StudyLayout(root=f"{RESULTS_ROOT}/{study_id(cfg)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onepixel.study",
        description="Print the directory of the study a config describes (config/config.yaml with "
        "the --config file's values on top, as `snakemake --configfile FILE` reads it).",
    )
    parser.add_argument("--config", type=Path, help="the study's config file (default: config/config.yaml alone)")
    parser.add_argument("--base", type=Path, default=Path("config/config.yaml"), help="the workflow's base config")
    parser.add_argument("--report", action="store_true", help="print the path of the study's report instead")
    args = parser.parse_args(argv)
    try:
        cfg = merged_config(args.base, args.config)
    except OnePixelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = layout(cfg)
    print(where.report if args.report else where.root)
    return 0


def merged_config(base: Path, overlay: Path | None = None) -> dict[str, Any]:
    """The validated config of ``base`` with the values of ``overlay`` on top, key by key, as
    Snakemake merges ``--configfile`` files over the Snakefile's ``configfile:``."""
    cfg = read_config_file(base)
    if overlay is not None and overlay.resolve() != base.resolve():
        cfg = _merge(cfg, read_config_file(overlay))
    return validate_config(cfg, check_files=False)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


if __name__ == "__main__":
    sys.exit(main())
