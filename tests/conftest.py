"""Shared test settings, and one real run of the study shared by the end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from onepixel.data import make_dataset, save_dataset
from onepixel.files import atomic_path
from onepixel.models import build_model, save_checkpoint
from onepixel.study import layout

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


#: the modules with the longest fixtures (minutes each), first: with pytest-xdist (make test) each module
#: runs whole on one worker, and the workers end together when the long ones start early
LONGEST_FIRST = (
    "test_own_models.py",
    "test_slurm.py",
    "test_studies.py",
    "test_dvc.py",
    "test_remotes.py",
    "test_workflow.py",
    "test_cli.py",
    "test_benchmarks.py",
    "test_profiles.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny models: one torch thread is faster, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A LeNet checkpoint (3 classes, 1x8x8) and a 24-image test set in the project's formats."""
    root = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    model = build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()
    images = torch.randint(0, 256, (24, 1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    labels[::5] = (labels[::5] + 1) % 3  # some misclassified: never attacked
    save_dataset(make_dataset(images.numpy(), labels.numpy(), ["a", "b", "c"], "toy", "test"), root / "test.nc")
    save_checkpoint(root / "lenet.pt", model, "lenet", {"num_classes": 3, "in_channels": 1, "image_size": 8})
    return root


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for snakemake / dvc / git in tests: this interpreter's tools first,
    no profile chosen by the caller's shell, a git identity for commits in temporary repos."""
    env = {key: value for key, value in os.environ.items() if key != "SNAKEMAKE_PROFILE"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"] = "onepixel tests"
        env[f"GIT_{who}_EMAIL"] = "tests@onepixel.invalid"
    env.update(extra)
    return env


def run_tool(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, timeout=timeout, check=False
    )


def check_tool(args: list[str], cwd: Path, timeout: int = 900, **env: str) -> subprocess.CompletedProcess[str]:
    result = run_tool(args, cwd, timeout, **env)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def copy_working_tree(dest: Path) -> Path:
    """Copy the repository as git sees it (tracked and untracked files, not ignored ones),
    without results: a clean checkout of the working tree, uncommitted changes included."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = REPO / name
        if name.split("/")[0] in ("results", "resources") or not source.is_file():
            continue  # results of the main checkout; files deleted but not yet committed
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def git_commit_all(repo: Path, message: str) -> str:
    check_tool(["git", "add", "-A"], repo)
    check_tool(["git", "commit", "-q", "-m", message], repo)
    return check_tool(["git", "rev-parse", "HEAD"], repo).stdout.strip()


def smoke_config() -> dict:
    """config/config.yaml with config/test.yaml's values on top (the smoke-test study, every key
    spelled out), and a different seed per stage."""

    def merge(base: dict, over: dict) -> dict:
        return {
            key: merge(base[key], over[key])
            if isinstance(over.get(key), dict) and isinstance(base.get(key), dict)
            else over.get(key, base.get(key))
            for key in {**base, **over}
        }

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config = merge(base, yaml.safe_load((REPO / "config" / "test.yaml").read_text()))
    config["study"] = ""  # the default study of the repository the tests run it in: results/digits/
    # distinct seeds, so that a test can tell which seed a result records
    for section, seed in (("dataset", 0), ("train", 1), ("attack", 2), ("locality", 3), ("vulnerability", 4)):
        config[section]["seed"] = seed
    return config


@dataclass(frozen=True)
class Study:
    """A git repository holding one finished `dvc repro` of the smoke-test study."""

    root: Path  # parent folder: other clones and the default DVC remote (../onepixel-dvc-store) go here
    repo: Path
    config: dict
    commit: str  # the commit the study was run at (what the results record as git_commit)
    repro: subprocess.CompletedProcess[str]

    @property
    def results(self) -> Path:
        return self.repo / layout(self.config).root


@pytest.fixture(scope="session")
def study(tmp_path_factory, worker_id: str) -> Study:
    """The smoke-test study run once per session, as a user runs it: a clean copy of the
    working tree made a git repository, config/config.yaml set to the test values
    (config/test.yaml), then `dvc repro study@digits` (whose stage runs `snakemake` with the workflow
    profile profiles/default), and its dvc.lock, metrics and plot tables committed.
    About 1.5 minutes on 2 CPU cores. Tests must not change it: copy or clone it.

    Under pytest-xdist (make test) the first worker that needs it runs it, in the folder the
    workers share, and the others wait for it and read what it recorded."""
    if worker_id == "master":
        return _run_study(tmp_path_factory.mktemp("study"))
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    record = shared / "study.json"
    with FileLock(shared / "study.lock"):
        if not record.exists():
            done = _run_study(shared / "study")
            repro = {key: getattr(done.repro, key) for key in ("args", "returncode", "stdout", "stderr")}
            fields = {"root": str(done.root), "repo": str(done.repo), "config": done.config, "commit": done.commit}
            with atomic_path(record) as partial:
                partial.write_text(json.dumps({**fields, "repro": repro}))
        fields = json.loads(record.read_text())
    return Study(
        root=Path(fields["root"]),
        repo=Path(fields["repo"]),
        config=fields["config"],
        commit=fields["commit"],
        repro=subprocess.CompletedProcess(**fields["repro"]),
    )


def _run_study(root: Path) -> Study:
    root.mkdir(parents=True, exist_ok=True)
    repo = copy_working_tree(root / "origin")
    config = smoke_config()
    (repo / "config" / "config.yaml").write_text(
        "# config/config.yaml with the values of config/test.yaml (tests/conftest.py)\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    check_tool(["git", "init", "-q", "-b", "main"], repo)
    commit = git_commit_all(repo, "study at the smoke-test config")
    repro = check_tool(["dvc", "repro", "study@digits"], repo, timeout=1800)
    git_commit_all(repo, "results of the smoke-test study")
    return Study(root=root, repo=repo, config=config, commit=commit, repro=repro)
