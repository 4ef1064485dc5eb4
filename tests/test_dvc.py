"""Sharing results with DVC: the default remote, push, pull into a clean clone without
recomputation (the modification-time problem), dvc get, and experiments with their
metrics and plots. All on the session's smoke-test study (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from conftest import Study, check_tool, run_tool
from onepixel.workflow.sharing import describe_status

SHARED = ("results",)


def _clone(study: Study, name: str) -> Path:
    """A colleague's clean clone, beside the study's repository (so the same default remote applies)."""
    target = study.root / name
    check_tool(["git", "clone", "-q", str(study.repo), str(target)], study.root)
    return target


def _digests(repo: Path, *tops: str) -> dict[str, str]:
    """SHA-256 of every file under ``tops`` (Snakemake's own timestamp files and the studies' logs aside:
    logs are made where a study runs, not versioned; `snakemake --touch` leaves empty ones)."""
    out = {}
    for top in tops:
        for path in sorted((repo / top).rglob("*")):
            if path.is_file() and path.name != ".snakemake_timestamp" and "logs" not in path.relative_to(repo).parts:
                out[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _planned_rules(repo: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs that `snakemake -n` plans ({} when nothing is to be done)."""
    result = check_tool(["snakemake", "-n", *args], repo)
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text[text.index("Job stats:") :].split("total")[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_describe_status_names_every_change_on_one_line():
    status = {
        "study": [
            {"changed deps": {"config/config.yaml": {"attack": "modified"}, "src/onepixel": "modified"}},
            {"changed outs": {"results/digits/models": "deleted"}},
        ]
    }
    assert describe_status(status) == (
        "study: changed deps config/config.yaml (attack modified), src/onepixel (modified); "
        "changed outs results/digits/models (deleted)"
    )


def test_default_remote_is_a_directory_beside_the_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    (repo / ".dvc" / "config").write_text((Path(__file__).parents[1] / ".dvc" / "config").read_text())
    check_tool(["git", "init", "-q"], repo)
    config = check_tool(["dvc", "config", "--list"], repo).stdout.splitlines()
    assert "core.remote=store" in config
    assert f"remote.store.url={tmp_path / 'onepixel-dvc-store'}" in config


@pytest.fixture(scope="module")
def pushed(study) -> Study:
    """The study pushed to its default remote: ../onepixel-dvc-store, a temporary folder here."""
    # the session's study is shared by the test workers: another may run dvc there now
    push = check_tool(["dvc", "--wait-for-lock", "push"], study.repo)
    assert re.search(r"\d+ files? pushed", push.stdout), push.stdout
    return study


@pytest.mark.slow
def test_push_puts_every_cached_output_in_the_default_remote(pushed):
    store = pushed.root / "onepixel-dvc-store"
    cache = pushed.repo / ".dvc" / "cache"
    stored = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    cached = sorted(p.relative_to(cache) for p in cache.rglob("*") if p.is_file() and "runs" not in p.parts)
    assert stored and stored == cached
    sync = check_tool(["dvc", "--wait-for-lock", "status", "--cloud"], pushed.repo)
    assert "in sync" in sync.stdout, sync.stdout


@pytest.mark.slow
def test_pull_into_a_clean_clone_needs_no_recomputation(pushed):
    clone = _clone(pushed, "colleague")
    assert not (clone / "results" / "digits" / "models").exists()
    pulled = check_tool([sys.executable, "-m", "onepixel.workflow.sharing"], clone)  # = make pull
    assert re.search(r"\d+ files? fetched", pulled.stdout), pulled.stdout
    assert "results of digits marked up to date for Snakemake" in pulled.stdout

    assert _planned_rules(clone) == {}
    assert json.loads(check_tool(["dvc", "status", "--json", "study@digits"], clone).stdout) == {}
    assert _digests(clone, *SHARED) == _digests(pushed.repo, *SHARED)


@pytest.mark.slow
def test_marking_up_to_date_repairs_any_order_of_modification_times(pushed):
    clone = _clone(pushed, "reordered")
    check_tool(["dvc", "pull", "study@digits"], clone)
    # The worst order a pull can leave: the data set, the first input of every job, newest.
    future = time.time() + 3600
    for path in (clone / "results" / "digits" / "data").rglob("*.nc"):
        os.utime(path, (future, future))
    planned = _planned_rules(clone)
    assert planned["train"] == 2 and planned["summary"] == 1, planned  # what a plain dvc pull can cause

    check_tool([sys.executable, "-m", "onepixel.workflow.sharing", "--no-pull"], clone)
    assert _planned_rules(clone) == {}
    # the touch recorded Snakemake's metadata: a changed setting still reruns exactly what it affects
    changed = _planned_rules(clone, "--config", "attack={'population': 20}")
    assert {"attack", "capture", "locality", "propagation", "figures", "summary"} <= set(changed), changed
    assert not {"prepare_data", "train"} & set(changed), changed


@pytest.mark.slow
def test_marking_up_to_date_refuses_results_of_another_config(pushed):
    clone = _clone(pushed, "edited")
    check_tool(["dvc", "pull", "study@digits"], clone)
    config = clone / "config" / "config.yaml"
    config.write_text(config.read_text().replace("population: 40", "population: 30"))
    result = run_tool([sys.executable, "-m", "onepixel.workflow.sharing", "--no-pull"], clone)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "error: the workspace does not match dvc.lock (study@digits: changed deps config/config.yaml (attack modified)); "
            "results are only marked up to date when they are those of this checkout's code and config: "
            "run `dvc pull` / `dvc checkout`, or `dvc repro study@digits` to recompute"
        )
    ]


@pytest.mark.slow
def test_dvc_get_fetches_models_and_results_from_the_remote(pushed, tmp_path):
    source = _clone(pushed, "no-cache")  # no local cache: what dvc get returns comes from the remote
    for target in ("results/digits/models", "results/digits/attack/lenet.nc"):
        check_tool(["dvc", "get", str(source), target, "-o", str(tmp_path / Path(target).name)], tmp_path)
    got = {
        f"results/digits/models/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "models").iterdir()
    }
    assert got == _digests(pushed.repo, "results/digits/models")
    assert (tmp_path / "lenet.nc").read_bytes() == (pushed.results / "attack" / "lenet.nc").read_bytes()
    assert not (source / ".dvc" / "cache").exists()


# -- experiments -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def experiments(pushed) -> Path:
    """Two experiments in a pulled clone: LeNet only, then LeNet with a population of 20."""
    clone = _clone(pushed, "experiments")
    check_tool([sys.executable, "-m", "onepixel.workflow.sharing"], clone)
    check_tool(
        ["dvc", "exp", "run", "study@digits", "-n", "lenet-only", "-S", "config/config.yaml:models=[lenet]"],
        clone,
        1800,
    )
    check_tool(
        ["dvc", "exp", "run", "study@digits", "-n", "population-20", "-S", "config/config.yaml:attack.population=20"],
        clone,
        1800,
    )
    return clone


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """Name -> data of the baseline commit and every experiment in `dvc exp show --json`."""
    rows = {}
    for entry in shown:
        if entry["rev"] == "workspace":
            continue
        rows["baseline"] = entry["data"]
        for experiment in entry.get("experiments") or []:
            for rev in experiment["revs"]:
                rows[rev["name"]] = rev["data"]
    return rows


def _summary(data: dict) -> dict:
    return data["metrics"]["results/digits/summary.json"]["data"]


@pytest.mark.slow
def test_exp_show_lists_the_experiments_with_their_metrics(experiments, pushed):
    rows = _experiments(json.loads(check_tool(["dvc", "exp", "show", "--json"], experiments).stdout))
    assert set(rows) == {"baseline", "lenet-only", "population-20"}
    baseline, lenet_only, small = (_summary(rows[name]) for name in ("baseline", "lenet-only", "population-20"))
    assert baseline == json.loads((pushed.results / "summary.json").read_text())

    assert set(baseline["models"]) == {"lenet", "resnet20"}
    assert set(lenet_only["models"]) == set(small["models"]) == {"lenet"}
    # LeNet only: the same LeNet results, nothing of LeNet recomputed
    assert lenet_only["models"]["lenet"] == baseline["models"]["lenet"]
    # population 20: a new attack, within its smaller budget (initial population + one per generation)
    params = rows["population-20"]["params"]["config/config.yaml"]["data"]
    assert params["attack"]["population"] == 20 and params["models"] == ["lenet"]
    generations = params["attack"]["generations"]
    assert small["models"]["lenet"]["mean_queries"] <= 20 * (generations + 1)
    assert (
        baseline["models"]["lenet"]["mean_queries"] > 20 * (generations + 1)
        or small["models"]["lenet"] != baseline["models"]["lenet"]
    )
    assert small["models"]["lenet"]["test_accuracy"] == baseline["models"]["lenet"]["test_accuracy"]
    configs = [json.dumps(rows[name]["params"]["config/config.yaml"]["data"], sort_keys=True) for name in rows]
    assert len(set(configs)) == 3

    table = check_tool(["dvc", "exp", "show", "--csv"], experiments).stdout.splitlines()
    names = [line.split(",")[0] for line in table[1:]]
    assert {"lenet-only", "population-20"} <= set(names), table


@pytest.mark.slow
def test_plots_compare_the_experiments_per_model(experiments):
    shown = json.loads(
        check_tool(["dvc", "plots", "diff", "lenet-only", "population-20", "--json"], experiments).stdout
    )
    plots = shown["data"]
    assert set(plots) == {
        "Test accuracy per model",
        "One-pixel attack success rate per model",
        "Same colour one pixel away (locality d=1) per model",
        "Locality: success rate against distance from the attacked pixel",
    }
    success = plots["One-pixel attack success rate per model"][0]
    assert set(success["revisions"]) == {"lenet-only", "population-20"}
    values = success["content"]["data"]["values"]
    assert {(row["rev"], row["model"]) for row in values} == {("lenet-only", "lenet"), ("population-20", "lenet")}
    locality = plots["Locality: success rate against distance from the attacked pixel"][0]["content"]["data"]["values"]
    assert {int(row["distance"]) for row in locality} == {1, 2}
