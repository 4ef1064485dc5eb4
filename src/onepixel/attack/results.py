"""Attack results as self-describing netCDF (xarray) datasets, and loading them with the model and test set they belong to."""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn

from onepixel.attack.de import AttackResult
from onepixel.errors import DataError
from onepixel.files import open_netcdf, write_netcdf
from onepixel.formats import LINEAGE, format_name
from onepixel.lineage import (
    attack_lineage,
    check_adversarial,
    check_checkpoint,
    check_model_input,
    check_test_set,
)
from onepixel.scoring import Classifier
from onepixel.stages import Job
from onepixel.torch_utils import resolve_device

REQUIRED_VARIABLES = (
    "success",
    "queries",
    "generations",
    "pixel_x",
    "pixel_y",
    "color",
    "true_class",
    "target_class",
    "adv_class",
    "prob_clean",
    "prob_adv",
    "adversarial",
    "rejected_candidates",
    "sample_id",
)

#: what an attack file records about the files it was made from (:data:`onepixel.formats.LINEAGE`): the
#: checkpoint's sha256, the test set's digest and the digest of the selected images (:mod:`onepixel.lineage`)
REQUIRED_ATTRS: tuple[str, ...] = LINEAGE["attack"]

_ATTRS: dict[str, dict[str, str]] = {
    "success": {
        "long_name": "attack success (re-evaluated on the final adversarial image)",
        "units": "1",
        "flag_values": "0 1",
        "flag_meanings": "failure success",
    },
    "queries": {"long_name": "candidate images evaluated by the model", "units": "1"},
    "generations": {"long_name": "differential evolution generations after the initial population", "units": "1"},
    "pixel_x": {"long_name": "column of the perturbed pixel", "units": "pixel"},
    "pixel_y": {"long_name": "row of the perturbed pixel", "units": "pixel"},
    "color": {
        "long_name": "new value of the perturbed pixel (replaces the original)",
        "units": "1",
        "valid_range": "0 255",
    },
    "true_class": {"long_name": "true class index", "units": "1"},
    "target_class": {"long_name": "target class index (-1: untargeted)", "units": "1"},
    "adv_class": {"long_name": "predicted class of the adversarial image", "units": "1"},
    "prob_clean": {"long_name": "softmax probability on the clean image", "units": "1"},
    "prob_adv": {"long_name": "softmax probability on the adversarial image", "units": "1"},
    "adversarial": {"long_name": "adversarial image", "units": "1", "valid_range": "0 255"},
    "rejected_candidates": {
        "long_name": "candidates rejected because the model output NaN or infinity (counted as not adversarial)",
        "units": "1",
    },
    "sample_id": {"long_name": "index of the image in the test set", "units": "1"},
}


def result_to_dataset(
    result: AttackResult,
    sample_ids: np.ndarray,
    config: dict[str, Any],
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """One row (dim ``sample``) per attack: per image untargeted, per (image, target) targeted.

    Dims ``sample, pixel, channel, class, y, x``; coordinate ``sample_id`` (index
    into the test set; repeated over targets in a targeted run). ``success`` is
    stored as uint8 0/1 (netCDF has no bool); :func:`load_attack` turns it back
    into bool. ``config`` is stored as the JSON attribute ``attack_config``;
    ``attrs`` (provenance, model checksum, seed, device...) are added as they are
    (values that are not str/int/float are JSON-encoded).
    """
    ids = np.asarray(sample_ids, dtype=np.int64)
    n = len(result)
    if ids.shape != (n,):
        raise ValueError(f"sample_ids must have shape ({n},); got {ids.shape}")
    r = {name: getattr(result, name).detach().cpu().numpy() for name in result.__dataclass_fields__}
    data = {
        "success": (("sample",), r["success"].astype(np.uint8, copy=False)),
        "queries": (("sample",), r["queries"].astype(np.int64, copy=False)),
        "generations": (("sample",), r["generations"].astype(np.int64, copy=False)),
        "pixel_x": (("sample", "pixel"), r["pixel_x"].astype(np.int64, copy=False)),
        "pixel_y": (("sample", "pixel"), r["pixel_y"].astype(np.int64, copy=False)),
        "color": (("sample", "pixel", "channel"), r["color"].astype(np.uint8, copy=False)),
        "true_class": (("sample",), r["true_class"].astype(np.int64, copy=False)),
        "target_class": (("sample",), r["target_class"].astype(np.int64, copy=False)),
        "adv_class": (("sample",), r["adv_class"].astype(np.int64, copy=False)),
        "prob_clean": (("sample", "class"), r["prob_clean"].astype(np.float32, copy=False)),
        "prob_adv": (("sample", "class"), r["prob_adv"].astype(np.float32, copy=False)),
        "adversarial": (("sample", "channel", "y", "x"), r["adversarial"].astype(np.uint8, copy=False)),
        "rejected_candidates": (("sample",), r["rejected_candidates"].astype(np.int64, copy=False)),
    }
    ds = xr.Dataset(
        {name: xr.Variable(dims, values, attrs=_ATTRS[name]) for name, (dims, values) in data.items()},
        coords={"sample_id": xr.Variable(("sample",), ids, attrs=_ATTRS["sample_id"])},
    )
    ds.attrs["attack_config"] = json.dumps(config, sort_keys=True, default=str)
    for key, value in (attrs or {}).items():
        ds.attrs[key] = (
            value
            if isinstance(value, (str, int, float, np.integer, np.floating)) and not isinstance(value, bool)
            else json.dumps(value, sort_keys=True, default=str)
        )
    return ds


#: the variables an exhaustive sweep adds to its attack file (a full one-pixel vulnerability map per image)
SWEEP_VARIABLES = ("sweep_fooling", "sweep_fooled", "sweep_min_true_prob")


def add_sweep_maps(ds: xr.Dataset, n_fooling: Any, fooled_map: Any, min_true_prob: Any) -> xr.Dataset:
    """``ds`` with the per-image maps of an exhaustive sweep (:class:`~onepixel.attack.exhaustive.SweepResult`).

    ``sweep_fooling`` ``(sample,)`` the fooling (position, colour) pairs, ``sweep_fooled``
    ``(sample, y, x)`` uint8 1 where some colour of the set fools the model there, and
    ``sweep_min_true_prob`` ``(sample, y, x)`` the lowest true-class probability over the
    colours at each position (NaN where nothing was evaluated).
    """
    as_np = lambda value: value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)  # noqa: E731
    ds = ds.copy()
    ds["sweep_fooling"] = xr.Variable(
        ("sample",),
        as_np(n_fooling).astype(np.int64),
        attrs={"long_name": "fooling (position, colour) pairs", "units": "1"},
    )
    ds["sweep_fooled"] = xr.Variable(
        ("sample", "y", "x"),
        as_np(fooled_map).astype(np.uint8),
        attrs={"long_name": "1 where some colour of the sweep's set fools the model at this position", "units": "1"},
    )
    ds["sweep_min_true_prob"] = xr.Variable(
        ("sample", "y", "x"),
        as_np(min_true_prob).astype(np.float32),
        attrs={"long_name": "lowest true-class probability over the sweep's colours at this position", "units": "1"},
    )
    return ds


def save_attack(ds: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """Write an attack dataset atomically (zlib-compressed adversarial images)."""
    encoding = {name: {"zlib": True, "complevel": 4} for name in ("adversarial", *SWEEP_VARIABLES[1:]) if name in ds}
    write_netcdf(ds, path, kind="attack", encoding=encoding)


def load_attack(path: str | os.PathLike[str]) -> xr.Dataset:
    """Load an attack file written by :func:`save_attack`; ``success`` comes back as bool.

    Raises:
        DataError: naming the file when it is missing, not readable netCDF (truncated,
            corrupt), not an attack result (e.g. the file of another stage), or without the
            attributes of :data:`REQUIRED_ATTRS` (what it was made from).
    """
    ds = open_netcdf(path, kind="attack", required=REQUIRED_VARIABLES)
    missing = [key for key in REQUIRED_ATTRS if not isinstance(ds.attrs.get(key), str) or not ds.attrs[key]]
    if missing:
        raise DataError(
            f"{path}: missing attribute(s) {', '.join(missing)} of a {format_name('attack')} file "
            "(what it was made from, recorded by the attack stage); re-run the attack"
        )
    attrs = dict(ds["success"].attrs)
    ds["success"] = ds["success"].astype(bool)
    ds["success"].attrs.update(attrs)
    return ds


def attack_config(ds: xr.Dataset) -> dict[str, Any]:
    """The attack configuration stored in ``ds`` (the attribute ``attack_config``)."""
    return json.loads(ds.attrs["attack_config"])


def merge_attacks(datasets: list[xr.Dataset], order: np.ndarray | None = None) -> xr.Dataset:
    """Concatenate shards of one attack along ``sample``.

    Rows keep the order of ``datasets`` (and within each shard), unless ``order``
    (a sequence of test-set sample ids) is given: rows are then sorted by the
    position of their ``sample_id`` in ``order`` (stable, so a targeted run's
    targets stay in their order). All shards must share ``attack_config``; the
    attributes of the first shard are kept. A repeated (sample_id, target_class)
    row is an error. Shards without rows (more shards than images) are skipped.
    """
    if not datasets:
        raise DataError("merge_attacks: no attack shards given")
    configs = {ds.attrs.get("attack_config") for ds in datasets}
    if len(configs) > 1:
        raise DataError("merge_attacks: shards were made with different attack_config; re-run them with one config")
    rows = [ds for ds in datasets if ds.sizes.get("sample", 0) > 0] or [datasets[0]]
    merged = xr.concat(
        rows, dim="sample", data_vars="all", coords="different", compat="equals", combine_attrs="override"
    )
    pairs = np.stack([merged["sample_id"].values, merged["target_class"].values], 1)
    if len(np.unique(pairs, axis=0)) != len(pairs):
        raise DataError("merge_attacks: the shards overlap (a sample_id/target_class row appears twice)")
    if order is not None:
        order = np.asarray(order, dtype=np.int64)
        position = {int(sid): i for i, sid in enumerate(order)}
        missing = [int(s) for s in merged["sample_id"].values if int(s) not in position]
        if missing:
            raise DataError(f"merge_attacks: sample_id {missing[0]} is not in the given order")
        rank = np.array([position[int(s)] for s in merged["sample_id"].values])
        merged = merged.isel(sample=np.argsort(rank, kind="stable"))
    merged.attrs = dict(datasets[0].attrs)
    return merged


def attack_model_output(attack: xr.Dataset) -> str:
    """What the attacked model returns, as the attack recorded it: ``"logits"`` or ``"probabilities"``.

    The attack stage stores the kind it resolved as the attribute ``model_output``.

    Raises:
        DataError: the attribute is missing or holds another value.
    """
    kind = attack.attrs.get("model_output")
    if kind not in ("logits", "probabilities"):
        where = attack.encoding.get("source", "attack file")
        raise DataError(
            f"{where}: attribute model_output is {kind!r}; expected 'logits' or 'probabilities' "
            "(the attack stage records it)"
        )
    return kind


class AttackedModel(NamedTuple):
    """A model in eval mode on its device, its test set and an attack result made with it.

    :meth:`classifier` reads the model the way the attack did (``model_output`` of the attack file).
    """

    model: nn.Module
    meta: dict[str, Any]
    test: Any
    attack: Any
    device: torch.device

    @property
    def model_output(self) -> str:
        """``"logits"`` or ``"probabilities"``: :func:`attack_model_output` of the attack."""
        return attack_model_output(self.attack)

    @property
    def lineage(self) -> dict[str, str]:
        """``model_sha256``, ``test_digest`` and ``attack_digest`` (:func:`onepixel.lineage.attack_lineage`):
        what the files made from this attack record."""
        return attack_lineage(self.attack)

    def classifier(self, batch_size: int | None = None) -> Classifier:
        """A :class:`~onepixel.scoring.Classifier` of the model on its device, with ``output`` the
        attack's ``model_output`` (``batch_size``: images per forward pass, default the classifier's)."""
        return Classifier(self.model, output=self.model_output, device=self.device, batch_size=batch_size)


def load_attacked_model(
    checkpoint_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    attack_path: str | os.PathLike[str],
    device: str = "auto",
    stage: str = "load",
    *,
    allow_code: bool = False,
) -> AttackedModel:
    """Load a checkpoint (``weights_only``), its test set and an attack file, and check they belong together.

    ``allow_code``: the checkpoint's model may be built by the user's factory (a config's
    ``model_sources.<model>.run_code``); otherwise such a checkpoint is refused in one line.

    Before any work, and each refusal one line naming both files (``stage`` starts it): the
    test set's :func:`~onepixel.lineage.dataset_digest` must be the attack's ``test_digest``,
    the checkpoint's sha256 its ``model_sha256``, the model must take the test set's images
    (:func:`~onepixel.lineage.check_model_input`), and every adversarial image must be its
    test image with the recorded pixels (:func:`~onepixel.lineage.check_adversarial`).

    Stages that evaluate the model use ``.classifier()`` of the result (a
    :class:`~onepixel.scoring.Classifier` with the attack's ``model_output``), so they
    read its output as the attack did; the files they write carry ``.lineage``.

    Raises:
        DataError: naming the file: unreadable, of another kind, inputs that do not belong
            together, an attack whose ``sample_id`` points beyond the test set, or whose
            ``model_output`` is unknown.
    """
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    dev = resolve_device(device)
    attack = load_attack(attack_path)
    test = load_dataset(test_path)
    check_test_set(stage, test_path, test, attack_path, attack.attrs["test_digest"])
    model, meta = load_checkpoint(checkpoint_path, map_location=dev, allow_code=allow_code)
    model.eval()
    check_checkpoint(stage, checkpoint_path, attack_path, attack.attrs["model_sha256"])
    check_model_input(stage, model, meta, checkpoint_path, test, test_path, dev)
    ids = np.asarray(attack["sample_id"].values, dtype=np.int64)
    if ids.size and (ids.max() >= test.sizes["sample"] or ids.min() < 0):
        raise DataError(
            f"{attack_path}: sample_id {int(ids.max())} is outside the {test.sizes['sample']} images of {test_path}"
        )
    check_adversarial(stage, attack, attack_path, test, test_path)
    attack_model_output(attack)  # an unknown kind fails here, before any work
    return AttackedModel(model, meta, test, attack, dev)


def load_job_inputs(job: Job, stage: str = "load") -> AttackedModel:
    """:func:`load_attacked_model` of a stage's ``checkpoint``, ``test`` and ``attack`` inputs, on ``device``
    (``stage``: the command named in refusals)."""
    from onepixel.config import runs_user_code

    return load_attacked_model(
        job.input("checkpoint"),
        job.input("test"),
        job.input("attack"),
        job.cfg["device"],
        stage=stage,
        allow_code=runs_user_code(job.cfg),
    )
