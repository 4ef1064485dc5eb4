"""Small models, readers, damaged files and tool environments shared by several test modules
(``from helpers import ...``)."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.attack import OnePixelAttack, load_attack, result_to_dataset, save_attack
from onepixel.data.dataset import apply_pixels
from onepixel.files import file_sha256
from onepixel.lineage import attack_lineage, dataset_digest, selection_digest
from onepixel.models import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

P_FOOLED = 1 / (math.exp(5) + 2)  # BlockModel's true-class probability when the block is hit: logits (0, 5, 0)
P_CLEAN = math.exp(5) / (math.exp(5) + 2)  # logits (5, 0, 0)


class BlockModel(nn.Module):
    """3 classes; class 1 (logit 5) iff a pixel brighter than 0.9 lies in rows 3..5, columns 3..5; else class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = (x[:, 0, 3:6, 3:6] > 0.9).flatten(1).any(1).float()
        return torch.stack([5 * (1 - hit), 5 * hit, torch.zeros_like(hit)], dim=1) + self.dummy


def png_size(path) -> tuple[int, int]:
    """``(width, height)`` of a PNG file, from its header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


#: attributes that describe the run (timing, place), not the result
RUN_ATTRS = ("wall_time_s", "candidates_per_s", "seconds", "write_rate", "git_commit", "platform")


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "SNAKEMAKE_PROFILE"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def _copy_workflow(root: Path) -> Path:
    """A scratch copy of the workflow's files (runs never touch the repository's results/)."""
    for name in ("workflow", "config", "src", "profiles"):
        shutil.copytree(REPO / name, root / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _attack_file(path: Path) -> Path:
    model = build_model("lenet", num_classes=3, in_channels=1, image_size=8).eval()
    images = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    res = OnePixelAttack(model, population=8, generations=1).run(images, torch.zeros(3, dtype=torch.long))
    save_attack(result_to_dataset(res, np.arange(3), {"population": 8}), path)
    return path


def _damaged(kind: str, tmp_path: Path, toy: Path) -> Path:
    """A file that is not what its reader expects."""
    if kind == "truncated":
        path = _attack_file(tmp_path / "truncated.nc")
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "random":
        path = tmp_path / "random.nc"
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path = tmp_path / "empty.nc"
        path.write_bytes(b"")
    elif kind == "other-stage":  # the reader gets the output of another stage
        path = tmp_path / "other.nc"
        shutil.copy(toy / "test.nc", path)
    else:
        raise ValueError(kind)
    return path


class _Payload:
    """Unpickling this would run a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A checkpoint file that must be refused, and the start of the message expected after its name."""
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(1).bytes(3000))
        return path, "not a readable PyTorch checkpoint"
    if kind == "truncated":
        save_checkpoint(path, build_model("lenet"), "lenet", {})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "not a readable PyTorch checkpoint, truncated or corrupt?"
    if kind == "whole-model-pickle":  # torch.save(model): loading it runs the class's code
        torch.save(build_model("lenet"), path)
        return path, "refused, it contains onepixel.models.lenet.LeNet, which would need arbitrary code execution"
    if kind == "code-payload":
        torch.save({"state_dict": build_model("lenet").state_dict(), "x": _Payload(tmp_path / "PWNED")}, path)
        return path, "refused, it contains posix.system, which would need arbitrary code execution"
    if kind == "plain-pickle":  # not torch.save's format at all, with a payload
        path.write_bytes(pickle.dumps(_Payload(tmp_path / "PWNED"), protocol=4))
        return path, "refused by weights_only loading"
    raise ValueError(kind)


def _assert_bit_identical(a: xr.Dataset, b: xr.Dataset, what: str) -> None:
    """Every variable and coordinate equal byte for byte (floats included), and the attributes but the run's."""
    assert set(a.variables) == set(b.variables), what
    for name in a.variables:
        x, y = a[name].variable, b[name].variable
        assert x.dims == y.dims and x.dtype == y.dtype and x.attrs == y.attrs, (what, name)
        assert np.ascontiguousarray(x.values).tobytes() == np.ascontiguousarray(y.values).tobytes(), (what, name)

    def keys(ds: xr.Dataset) -> set:
        return {k for k in ds.attrs if k not in RUN_ATTRS}

    assert keys(a) == keys(b), what
    for key in keys(a):
        assert np.array_equal(np.asarray(a.attrs[key]), np.asarray(b.attrs[key])), (what, key)


class _Mixed(nn.Module):
    """BatchNorm model; batch statistics in train mode would change its outputs and running stats."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.frozen = nn.BatchNorm2d(4)  # left in eval mode by its user while the rest trains
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.frozen(self.bn(self.conv(x)))))


#: lineage attributes for attack files that a test writes and reads back without a stage checking them
STUB_LINEAGE = {"model_sha256": "ab" * 32, "test_digest": "cd" * 32, "selection_digest": "ef" * 32}


def fake_checkpoint(path: Path) -> Path:
    """A file that stands in for a checkpoint where a test replaces ``load_checkpoint``: the stages
    still hash it and compare the hash with the attack's ``model_sha256``."""
    path.write_bytes(b"stands in for a checkpoint: " + path.name.encode())
    return path


def save_attack_rows(attack: xr.Dataset, test: xr.Dataset, path: Path, checkpoint: Path | None = None) -> Path:
    """Write the hand-made rows of an attack on ``test`` (``success``, pixels, colours, classes,
    ``sample_id``) as a real attack file (:func:`onepixel.attack.save_attack`). The variables a test
    does not set are filled in: ``adversarial`` with the clean images with the recorded pixels
    replaced, ``adv_class`` with the true class, and queries, generations, probabilities and rejected
    candidates with zeros; the model is recorded as returning logits (attribute ``model_output``)
    unless ``attack`` says otherwise. The lineage is that of ``test`` (``test_digest``), of the
    ``checkpoint`` file (``model_sha256``; a stub without one) and of the rows' sample ids
    (``selection_digest``), unless ``attack``'s attributes say otherwise."""
    n, classes = attack.sizes["sample"], test.sizes["class"]
    ids = attack["sample_id"].values
    clean = torch.from_numpy(np.ascontiguousarray(test["image"].values[ids]))
    adversarial = apply_pixels(
        clean,
        torch.from_numpy(np.asarray(attack["pixel_x"].values, np.int64)),
        torch.from_numpy(np.asarray(attack["pixel_y"].values, np.int64)),
        torch.from_numpy(np.asarray(attack["color"].values, np.uint8)),
    ).numpy()
    filler = {
        "adversarial": (("sample", "channel", "y", "x"), adversarial),
        "adv_class": ("sample", attack["true_class"].values),
        "queries": ("sample", np.zeros(n, np.int64)),
        "generations": ("sample", np.zeros(n, np.int64)),
        "rejected_candidates": ("sample", np.zeros(n, np.int64)),
        "prob_clean": (("sample", "class"), np.zeros((n, classes), np.float32)),
        "prob_adv": (("sample", "class"), np.zeros((n, classes), np.float32)),
    }
    rows = attack.assign({name: value for name, value in filler.items() if name not in attack})
    lineage = {
        "model_sha256": file_sha256(checkpoint) if checkpoint is not None else STUB_LINEAGE["model_sha256"],
        "test_digest": dataset_digest(test),
        "selection_digest": selection_digest(list(dict.fromkeys(ids.tolist()))),
    }
    defaults = {"model_output": "logits", "attack_config": "{}", "shards": 1, "wall_time_s": 0.0, **lineage}
    rows.attrs = {**defaults, **attack.attrs}
    save_attack(rows.assign(success=rows["success"].astype(np.uint8)), path)
    return path


def lineage_of(attack_path: Path) -> dict[str, str]:
    """``model_sha256``, ``test_digest`` and ``attack_digest`` of an attack file: what a file made from it records."""
    return attack_lineage(load_attack(attack_path))
