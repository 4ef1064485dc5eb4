"""Sharded attacks: select once, attack disjoint shards, merge == one unsharded run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from onepixel.attack import load_attack
from onepixel.attack.stage import read_selection, select_correct_images, shard_indices
from onepixel.cli import main
from onepixel.errors import ConfigError, DataError
from onepixel.stages import run_stage

REPO = Path(__file__).resolve().parents[1]
#: attributes that measure the run or record how it was split (the config digest includes attack.shards
#: and batch_size), rather than describe the result
TIMING_ATTRS = ("wall_time_s", "candidates_per_s", "shards", "shard", "config_digest", "study_config")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A LeNet checkpoint and a 40-image test set of 3 classes (8x8 grey), in project formats."""
    models = pytest.importorskip("onepixel.models")
    data = pytest.importorskip("onepixel.data")
    root = tmp_path_factory.mktemp("toy")
    torch.manual_seed(0)
    model = models.build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (40, 1, 8, 8), generator=gen, dtype=torch.uint8)
    with torch.inference_mode():
        pred = model(images.float() / 255).argmax(1)
    labels = pred.clone()
    labels[::4] = (pred[::4] + 1) % 3  # a quarter misclassified: never selected
    data.save_dataset(
        data.make_dataset(images.numpy(), labels.numpy(), ["a", "b", "c"], "toy", "test"), root / "test.nc"
    )
    models.save_checkpoint(root / "lenet.pt", model, "lenet", {"num_classes": 3, "in_channels": 1, "image_size": 8})
    return root


def run_attack(toy, out, cfg, shard=0, shards=1, selection=None):
    """The attack stage on the toy model: shard ``shard`` of ``shards`` (the selection made here without one)."""
    return run_stage(
        "attack",
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc", "selection": selection},
        {"out": out},
        {"attack": {**cfg, "shards": shards}, "device": "cpu"},
        {"shard": shard},
    )


def run_select(toy, out, cfg):
    return run_stage(
        "select_images",
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"},
        {"out": out},
        {"attack": cfg, "device": "cpu"},
    )


def run_merge(paths, out, selection=None):
    return run_stage("merge_attack", {"shards": paths, "selection": selection}, {"out": out})


def _same_result(a: xr.Dataset, b: xr.Dataset) -> None:
    """The same rows: every variable and coordinate with the same dims, dtype and attributes; every
    integer variable (success, queries, pixel, colour, classes, adversarial image, sample_id) exactly
    equal; the softmax probabilities equal to float32 rounding (1e-6); dataset attributes equal but
    the timings.

    The probabilities are the only values a shard can change, by at most a few float32 ulps: the
    final re-evaluation runs the model on batches of the shard's images, and the CPU's matrix
    products round differently for other batch sizes.
    """
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        x, y = a[name].variable, b[name].variable
        assert x.dims == y.dims and x.dtype == y.dtype and x.attrs == y.attrs, name
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x.values, y.values, rtol=0, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(x.values, y.values, err_msg=name)

    def keep(ds):
        return {k: v for k, v in ds.attrs.items() if k not in TIMING_ATTRS}

    assert keep(a) == keep(b)


def test_shard_indices_partition():
    for num in (0, 1, 5, 12, 13):
        for shards in (1, 2, 3, 7):
            parts = [shard_indices(num, i, shards) for i in range(shards)]
            np.testing.assert_array_equal(np.concatenate(parts), np.arange(num))
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ConfigError, match="^shard:"):
        shard_indices(10, 3, 3)
    with pytest.raises(ConfigError, match="^shards:"):
        shard_indices(10, 0, 0)


@pytest.mark.parametrize("targeted", [False, True])
def test_sharded_equals_unsharded(toy, tmp_path, targeted):
    cfg = {"num_images": 11, "population": 20, "generations": 6, "batch_size": 45, "seed": 3, "targeted": targeted}
    whole = run_attack(toy, tmp_path / "whole.nc", cfg)

    selection = tmp_path / "selection.json"
    chosen = run_select(toy, selection, {**cfg, "shards": 3})
    assert len(chosen) == 11 and len(set(chosen.tolist())) == 11
    np.testing.assert_array_equal(read_selection(selection, {**cfg, "shards": 3}, toy / "lenet.pt"), chosen)
    np.testing.assert_array_equal(np.unique(whole["sample_id"].values), np.sort(chosen))

    # shards run in another order and with another batch size than the whole: results must not care
    paths = []
    for shard in (2, 0, 1):
        path = tmp_path / f"shard_{shard}-of-3.nc"
        ds = run_attack(toy, path, {**cfg, "batch_size": 20}, shard, 3, selection)
        assert ds.attrs["shard"] == shard and ds.attrs["shards"] == 3
        paths.append(path)
    ids = [set(load_attack(p)["sample_id"].values.tolist()) for p in paths]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])  # disjoint
    assert set().union(*ids) == set(chosen.tolist())  # covering

    merged = run_merge(paths, tmp_path / "merged.nc", selection)
    # batch_size differs between the runs, but it is part of the stored config: compare without it
    on_disk_whole, on_disk_merged = load_attack(tmp_path / "whole.nc"), load_attack(tmp_path / "merged.nc")
    for ds in (on_disk_whole, on_disk_merged, whole, merged):
        cfg_attr = json.loads(ds.attrs["attack_config"])
        assert "shards" not in cfg_attr  # how the work was split is not part of the result's config
        ds.attrs["attack_config"] = json.dumps({k: v for k, v in cfg_attr.items() if k != "batch_size"})
    _same_result(whole, merged)
    _same_result(on_disk_whole, on_disk_merged)
    assert on_disk_merged.attrs["shards"] == 3 and "shard" not in on_disk_merged.attrs
    assert on_disk_merged.attrs["num_images"] == 11
    wall = sum(load_attack(p).attrs["wall_time_s"] for p in paths)
    assert on_disk_merged.attrs["wall_time_s"] == pytest.approx(wall)

    # without a selection file each shard selects by itself, with the same result
    shard_paths = []
    for shard in range(3):
        path = tmp_path / f"self_{shard}.nc"
        run_attack(toy, path, cfg, shard, 3)
        shard_paths.append(path)
    run_merge(shard_paths[::-1], tmp_path / "merged2.nc")
    _same_result(load_attack(tmp_path / "whole.nc"), load_attack(tmp_path / "merged2.nc"))


def test_more_shards_than_images(toy, tmp_path):
    cfg = {"num_images": 2, "population": 12, "generations": 2, "seed": 1}
    whole = run_attack(toy, tmp_path / "whole.nc", cfg)
    paths = []
    for shard in range(4):
        path = tmp_path / f"s{shard}.nc"
        ds = run_attack(toy, path, cfg, shard, 4)
        assert ds.sizes["sample"] == (1 if shard in (0, 1) else 0)
        paths.append(path)
    merged = run_merge(paths, tmp_path / "merged.nc")
    _same_result(whole, merged)


def test_merge_refuses_incomplete_or_foreign_shards(toy, tmp_path):
    cfg = {"num_images": 6, "population": 12, "generations": 2, "seed": 1}
    selection = tmp_path / "sel.json"
    run_select(toy, selection, cfg)
    paths = []
    for shard in range(3):
        paths.append(tmp_path / f"s{shard}.nc")
        run_attack(toy, paths[-1], cfg, shard, 3, selection)
    with pytest.raises(DataError, match=r"expected shards 0..2 of 3, each once: shard\(s\) 2 of 3 missing"):
        run_merge(paths[:2], tmp_path / "m.nc")
    with pytest.raises(DataError, match=r"shard\(s\) 2 of 3 missing; shard\(s\) 0 given more than once"):
        run_merge([paths[0], paths[0], paths[1]], tmp_path / "m.nc")
    # named as the workflow names them: the missing shard's file is named
    named = [tmp_path / "w" / f"shard_{i}-of-3.nc" for i in (0, 2)]
    named[0].parent.mkdir()
    for source, target in zip((paths[0], paths[2]), named, strict=True):
        shutil.copy(source, target)
    with pytest.raises(DataError, match=rf"shard\(s\) 1 of 3 missing \({tmp_path / 'w' / 'shard_1-of-3.nc'}\)"):
        run_merge(named, tmp_path / "m.nc")
    other = tmp_path / "other.json"
    run_select(toy, other, {**cfg, "num_images": 7})
    with pytest.raises(DataError, match="selects 7"):
        run_merge(paths, tmp_path / "m.nc", other)
    assert not (tmp_path / "m.nc").exists()
    # a selection made with another seed is refused by the shard
    with pytest.raises(DataError, match="attack.seed"):
        run_attack(toy, tmp_path / "x.nc", {**cfg, "seed": 2}, 0, 3, selection)
    with pytest.raises(DataError, match="selection file not found"):
        read_selection(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="^shard:"):
        run_attack(toy, tmp_path / "x.nc", cfg, 3, 3)


def test_cli_shards_and_merge(toy, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("device: cpu\nattack:\n  num_images: 5\n  population: 12\n  generations: 2\n")
    common = ["--config", str(config), "--checkpoint", str(toy / "lenet.pt"), "--test", str(toy / "test.nc")]
    assert main(["attack", *common, "--out", str(tmp_path / "whole.nc")]) == 0
    assert main(["select-images", *common, "--out", str(tmp_path / "sel.json")]) == 0
    for shard in range(2):
        assert (
            main(
                [
                    "attack",
                    *common,
                    "--shard",
                    str(shard),
                    "--set",
                    "attack.shards=2",
                    "--selection",
                    str(tmp_path / "sel.json"),
                    "--out",
                    str(tmp_path / f"s{shard}.nc"),
                ]
            )
            == 0
        )
    assert (
        main(
            [
                "merge-attack",
                "--shards",
                str(tmp_path / "s1.nc"),
                str(tmp_path / "s0.nc"),
                "--selection",
                str(tmp_path / "sel.json"),
                "--out",
                str(tmp_path / "merged.nc"),
            ]
        )
        == 0
    )
    assert "merged 2 shards" in capsys.readouterr().err
    _same_result(load_attack(tmp_path / "whole.nc"), load_attack(tmp_path / "merged.nc"))
    assert main(["attack", *common, "--shard", "2", "--set", "attack.shards=2", "--out", str(tmp_path / "bad.nc")]) == 2
    assert capsys.readouterr().err.startswith("error: shard: 2 is not allowed")


def test_selection_matches_select_correct_images(toy, tmp_path):
    data = pytest.importorskip("onepixel.data")
    models = pytest.importorskip("onepixel.models")
    cfg = {"num_images": 9, "seed": 4}
    chosen = run_select(toy, tmp_path / "s.json", cfg)
    test = data.load_dataset(toy / "test.nc")
    model, _ = models.load_checkpoint(toy / "lenet.pt")
    expected = select_correct_images(
        model, torch.from_numpy(test["image"].values), torch.from_numpy(test["label"].values), 9, 4
    )
    np.testing.assert_array_equal(chosen, expected)
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["sample_ids"] == expected.tolist() and saved["num_classes"] == 3 and saved["seed"] == 4


# ---------------------------------------------------------------------------
# the workflow: shard jobs + merge, and resuming from finished shards
# ---------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _jobs(stdout: str) -> dict[str, int]:
    """The ``job count`` table of a Snakemake dry run as {rule: count}."""
    counts: dict[str, int] = {}
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["job", "count"])
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or parts[0] == "total":
            if parts[:1] == ["total"]:
                break
            continue
        counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wf")
    for name in ("workflow", "config", "src"):
        shutil.copytree(REPO / name, root / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _dry_run(workdir: Path, *args: str) -> dict[str, int]:
    result = subprocess.run(
        ["snakemake", "-n", "--quiet", "rules", *args],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return _jobs(result.stdout + "\n" + result.stderr)


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_workflow_schedules_shards_and_a_merge(workdir):
    jobs = _dry_run(workdir, "--config", "models=[lenet]", "attack={shards: 3}", "--", "results/digits/attack/lenet.nc")
    assert jobs == {"prepare_data": 1, "train": 1, "select_images": 1, "attack": 3, "merge_attack": 1}
    jobs = _dry_run(workdir, "--config", "models=[lenet]", "--", "results/digits/attack/lenet.nc")
    assert jobs == {"prepare_data": 1, "train": 1, "select_images": 1, "attack": 1, "merge_attack": 1}  # one path
    full = _dry_run(workdir, "--config", "attack={shards: 3}")
    assert full["attack"] == 6 and full["merge_attack"] == 2 and full["capture"] == 2


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_workflow_reruns_only_missing_shards(workdir, tmp_path):
    """With finished upstream files and shards 0 and 2 done, only shard 1 and the merge are left.

    The files are placeholders without Snakemake's metadata, so only the mtime trigger is
    used here; test_workflow.py interrupts a real run instead.
    """
    root = tmp_path / "resume"
    shutil.copytree(workdir, root, symlinks=True)
    files = [
        "results/digits/data/train.nc",
        "results/digits/data/test.nc",
        "results/digits/models/lenet.pt",
        "results/digits/metrics/lenet.json",
        "results/digits/attack/lenet/selection.json",
        "results/digits/attack/lenet/shard_0-of-3.nc",
        "results/digits/attack/lenet/shard_2-of-3.nc",
    ]
    now = time.time() - 100
    for i, name in enumerate(files):  # oldest first, so nothing looks out of date
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("placeholder")
        os.utime(path, (now + i, now + i))
    jobs = _dry_run(
        root,
        "--rerun-triggers",
        "mtime",
        "--config",
        "models=[lenet]",
        "attack={shards: 3}",
        "--",
        "results/digits/attack/lenet.nc",
    )
    assert jobs == {"attack": 1, "merge_attack": 1}


# A real sharded run that is interrupted and resumed, and whose merged result equals an unsharded
# attack, is tests/test_workflow.py::test_an_interrupted_workflow_resumes_without_redoing_finished_shards.
