"""Studies as self-contained, versioned units: every study owns results/<study id>/.

Beside the session's default study (tests/conftest.py, results/digits/), the shipped
smoke-test config (config/test.yaml, results/digits-smoke/) and a study of its own
with another train/test split (config/split.yaml, results/digits-split/) run in a
copy of its repository, as `dvc repro` stages. Neither may write, invalidate or mix
files of another, including logs and reports; each is pushed, pulled into a clean
clone and is up to date there; `dvc metrics show` is a table of numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml

from conftest import Study, check_tool, git_commit_all
from onepixel.study import merged_config

pytestmark = pytest.mark.slow

OWN = {"digits": "config/config.yaml", "digits-smoke": "config/test.yaml", "digits-split": "config/split.yaml"}
SKIPPED = (".git", ".dvc", ".snakemake")  # the tools' own metadata


def _files(repo: Path) -> dict[str, tuple[str, int]]:
    """Every file of the working tree but the tools' metadata: path -> (SHA-256, mtime)."""
    out = {}
    for path in sorted(repo.rglob("*")):
        relative = path.relative_to(repo)
        if path.is_file() and relative.parts[0] not in SKIPPED:
            out[str(relative)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return out


def _nothing_to_do(repo: Path, config: str) -> bool:
    result = check_tool(["snakemake", "-n", "--configfile", config], repo)
    return "Nothing to be done" in result.stdout + result.stderr


def _report(repo: Path, config: str) -> Path:
    """The study's report, made with the documented call (the path from `python -m onepixel.study`)."""
    path = check_tool([sys.executable, "-m", "onepixel.study", "--config", config, "--report"], repo).stdout.strip()
    check_tool(["snakemake", "--configfile", config, "--report", path], repo)
    return repo / path


@pytest.fixture(scope="module")
def studies(study: Study, tmp_path_factory) -> dict:
    """The session's study copied, two more studies added to it and run with `dvc repro`."""
    root = tmp_path_factory.mktemp("studies")
    repo = root / "repo"
    shutil.copytree(study.repo, repo, symlinks=True)
    # LeNet only, to keep it short
    smoke = repo / "config" / "test.yaml"
    text = smoke.read_text().replace("models: [lenet, resnet20]", "models: [lenet]")
    smoke.write_text(text[: text.index("attacks:")])  # nor the further attacks: the studies' files are tested here
    (repo / "config" / "split.yaml").write_text(
        "# the default study's settings with another train/test split\n"
        "study: split\nmodels: [lenet]\ndataset:\n  test_fraction: 0.3\n"
    )
    dvc_yaml = repo / "dvc.yaml"
    listed = "      digits-smoke: {config: config/test.yaml}\n"
    assert listed in dvc_yaml.read_text()
    dvc_yaml.write_text(
        dvc_yaml.read_text().replace(listed, listed + "      digits-split: {config: config/split.yaml}\n")
    )
    git_commit_all(repo, "two more studies")
    before = _files(repo)
    repro = check_tool(["dvc", "repro", "study@digits-smoke", "study@digits-split"], repo, timeout=1800)
    after = _files(repo)
    # the two new studies' reports (the default study's is tests/test_report.py's)
    reports = {name: _report(repo, OWN[name]) for name in ("digits-smoke", "digits-split")}
    git_commit_all(repo, "results of the two studies")
    return {"root": root, "repo": repo, "before": before, "after": after, "repro": repro, "reports": reports}


def test_every_config_is_a_dvc_stage_under_the_directory_it_writes():
    repo = Path(__file__).resolve().parents[1]
    declared = yaml.safe_load((repo / "dvc.yaml").read_text())["vars"][0]["studies"]
    configs = sorted(str(p.relative_to(repo)) for p in (repo / "config").glob("*.yaml"))
    assert sorted(item["config"] for item in declared.values()) == configs
    base = repo / "config" / "config.yaml"
    for name, item in declared.items():
        cfg = merged_config(base, repo / item["config"])
        assert f"results/{name}" == f"results/{cfg['dataset']['name']}" + (f"-{cfg['study']}" if cfg["study"] else "")


def test_the_new_studies_write_only_under_their_own_directories(studies):
    before, after = studies["before"], studies["after"]
    changed = sorted(path for path in after if before.get(path) != after[path])
    outside = [path for path in changed if not path.startswith(("results/digits-smoke/", "results/digits-split/"))]
    assert outside == ["dvc.lock"], outside
    # the default study, its dataset, logs and report included, is untouched
    default = {path: value for path, value in before.items() if path.startswith("results/digits/")}
    assert default and all(after[path] == value for path, value in default.items())
    # each study has its own dataset, logs, benchmarks and report
    for name in ("digits-smoke", "digits-split"):
        made = [path for path in changed if path.startswith(f"results/{name}/")]
        for part in ("data/test.nc", "logs/prepare_data.log", "logs/attack_lenet_shard_0-of-1.log", "summary.json"):
            assert f"results/{name}/{part}" in made, (name, part)
        assert any(path.startswith(f"results/{name}/logs/benchmarks/") for path in made), name
    assert "Running stage 'study@digits-smoke'" in studies["repro"].stdout
    assert "study@digits'" not in studies["repro"].stdout


def test_another_split_is_its_own_dataset(studies):
    repo = studies["repo"]
    sizes = {}
    for name in ("digits", "digits-split"):
        with xr.open_dataset(repo / "results" / name / "data" / "test.nc") as test:
            sizes[name] = test.sizes["sample"]
    assert sizes == {"digits": math.ceil(1797 * 0.25), "digits-split": math.ceil(1797 * 0.3)}  # as scikit-learn splits
    attacked = xr.open_dataset(repo / "results/digits-split/attack/lenet.nc")
    assert int(attacked["sample_id"].max()) < sizes["digits-split"]


def test_no_study_invalidates_another(studies):
    for config in OWN.values():
        assert _nothing_to_do(studies["repo"], config), config


def test_each_study_has_its_own_report(studies):
    repo = studies["repo"]
    for name, path in studies["reports"].items():
        assert path == repo / "results" / name / "report.html"
        page = path.read_text()
        shown = set(re.findall(r"results/[a-z0-9.-]+/figures/", page))
        assert shown == {f"results/{name}/figures/"}, (name, shown)


def test_two_studies_are_pushed_pulled_and_up_to_date_in_a_clean_clone(studies):
    repo, root = studies["repo"], studies["root"]
    check_tool(["dvc", "push"], repo)
    clone = root / "colleague"
    check_tool(["git", "clone", "-q", str(repo), str(clone)], root)
    pulled = check_tool([sys.executable, "-m", "onepixel.workflow.sharing"], clone)  # = make pull
    assert "results of digits, digits-smoke, digits-split marked up to date for Snakemake" in pulled.stdout
    for config in OWN.values():
        assert _nothing_to_do(clone, config), config

    def versioned(where: Path) -> dict[str, str]:
        """Everything but the logs and the reports (made where a study runs; `snakemake --touch` makes empty logs)."""
        return {
            path: digest
            for path, (digest, _) in _files(where).items()
            if path.startswith("results/") and "/logs/" not in path and not path.endswith("report.html")
        }

    assert versioned(clone) == versioned(repo)

    # one study alone: make pull STUDY=digits-split
    alone = root / "alone"
    check_tool(["git", "clone", "-q", str(repo), str(alone)], root)
    check_tool([sys.executable, "-m", "onepixel.workflow.sharing", "--study", "digits-split"], alone)
    assert _nothing_to_do(alone, "config/split.yaml")
    assert not (alone / "results" / "digits" / "models").exists()


def test_metrics_show_is_a_table_of_numbers(studies):
    repo = studies["repo"]
    shown = json.loads(check_tool(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    assert {f"results/{name}/summary.json" for name in OWN} <= set(metrics)

    def leaves(value: object) -> list[object]:
        return [leaf for item in value.values() for leaf in leaves(item)] if isinstance(value, dict) else [value]

    for path in (f"results/{name}/summary.json" for name in OWN):
        values = leaves(metrics[path]["data"])
        assert values and all(isinstance(v, int | float) or v is None for v in values), path
    table = check_tool(["dvc", "metrics", "show", "results/digits-split/summary.json"], repo).stdout
    header, *rows = [line for line in table.splitlines() if line.strip()]
    assert "models.lenet.attack_success_rate" in header and "provenance" not in table
    # one row, and no cell wider than a number (the split study has further attacks: many columns)
    columns = len(header.split())
    assert len(rows) == 1 and len(rows[0].split()) == columns
    assert max(len(line) for line in table.splitlines()) < 60 * columns
