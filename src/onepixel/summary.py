"""One metrics file across models: accuracy, attack success, locality, propagation.

This is what ``dvc metrics show`` and ``dvc exp show`` display.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onepixel.errors import DataError
from onepixel.utils import open_netcdf, provenance, write_json

PathLike = str | os.PathLike[str]


def _finite(value: Any) -> float | None:
    number = float(value)
    return round(number, 6) if np.isfinite(number) else None


def model_summary(metrics_path: PathLike, attack_path: PathLike, propagation_path: PathLike,
                  locality_path: PathLike) -> dict[str, Any]:
    """Headline numbers of one model.

    Returns a flat dict: test accuracy, attacked images, attack success rate,
    mean queries, the locality success rate at each Chebyshev distance with its
    random-position baseline, and the peak / spread of the last captured layer's
    normalised PMmax averaged over successful attacks.
    """
    try:
        metrics = json.loads(Path(metrics_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{metrics_path}: not a readable metrics JSON ({exc})") from exc
    attack = open_netcdf(attack_path, required=("success", "queries"))
    locality = open_netcdf(locality_path, required=("success_rate", "baseline_success_rate"))
    prop = open_netcdf(propagation_path, required=("peak", "spread"))

    success = attack["success"].values.astype(bool)
    out: dict[str, Any] = {
        "test_accuracy": _finite(metrics["test_accuracy"]),
        "attacked": int(success.size),
        "attack_success_rate": _finite(success.mean()) if success.size else None,
        "mean_queries": _finite(attack["queries"].values.mean()) if success.size else None,
        "baseline_success_rate": _finite(locality["baseline_success_rate"].values),
    }
    for d, rate in zip(locality["distance"].values, locality["success_rate"].values):
        out[f"locality_d{int(d)}"] = _finite(rate)
    succeeded = prop["success"].values.astype(bool)
    last = prop["peak"].isel(layer=-1).values[succeeded]
    spread = prop["spread"].isel(layer=-1).values[succeeded]
    out["last_layer_peak"] = _finite(np.nanmean(last)) if np.isfinite(last).any() else None
    out["last_layer_spread"] = _finite(np.nanmean(spread)) if np.isfinite(spread).any() else None
    return out


def write_summary(metrics: Mapping[str, PathLike], attacks: Mapping[str, PathLike],
                  propagations: Mapping[str, PathLike], localities: Mapping[str, PathLike],
                  out_path: PathLike) -> dict[str, Any]:
    """Write ``{"models": {name: model_summary(...)}, "provenance": ...}`` as JSON and return it."""
    summary = {
        "models": {
            name: model_summary(metrics[name], attacks[name], propagations[name], localities[name])
            for name in metrics
        },
        "provenance": provenance(),
    }
    write_json(summary, out_path)
    return summary
