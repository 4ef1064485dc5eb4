"""The pins of the conda environment equal the project's own (constraints.txt, pyproject)."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _env_pins(env_file: Path) -> dict[str, str]:
    env = yaml.safe_load(env_file.read_text())
    pip = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict))
    return {line.split("==")[0].lower(): line.split("==")[1] for line in pip}


def _pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        deps += extra
    return [Requirement(dep) for dep in deps]


def test_every_conda_env_pin_equals_constraints():
    constraints = _constraints()
    envs = sorted((REPO / "workflow" / "envs").glob("*.yaml"))
    assert envs
    for env_file in envs:
        for name, version in _env_pins(env_file).items():
            assert constraints.get(name) == version, f"{env_file.name}: {name}=={version} vs constraints.txt"


def test_runtime_dependencies_are_all_in_the_conda_env():
    pins = _env_pins(REPO / "workflow" / "envs" / "onepixel.yaml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(dep).name.lower() for dep in project["dependencies"]}
    assert runtime <= set(pins)


def test_constraints_satisfy_pyproject():
    constraints = _constraints()
    for req in _pyproject_requirements():
        version = constraints.get(req.name.lower())
        assert version is not None, f"{req.name} missing from constraints.txt"
        assert req.specifier.contains(version), f"{req.name}=={version} violates {req.specifier}"


def test_torch_pins_are_exact():
    constraints = _constraints()
    assert constraints["torch"] == "2.14.1"
    assert constraints["torchvision"] == "0.29.1"


def test_the_longest_test_modules_named_first_exist():
    from conftest import LONGEST_FIRST

    assert [name for name in LONGEST_FIRST if not (REPO / "tests" / name).is_file()] == []
