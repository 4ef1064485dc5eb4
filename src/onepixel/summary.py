"""One metrics file across models: accuracy, attack success, locality, propagation.

``summary.json`` is what ``dvc metrics show`` and ``dvc exp show`` display; the
per-model CSV tables are what ``dvc plots`` draws (see dvc.yaml), and the HTML
table is the metrics page of the workflow's report (``snakemake --report``).
"""

from __future__ import annotations

import csv
import html
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from onepixel.errors import DataError
from onepixel.files import atomic_path, open_netcdf, read_json, write_json
from onepixel.formats import LINEAGE
from onepixel.lineage import ATTACK_ROWS, attack_digest, check_same, require, short
from onepixel.provenance import provenance
from onepixel.stages import Job

PathLike = str | os.PathLike[str]


def _finite(value: Any) -> float | None:
    number = float(value)
    return round(number, 6) if np.isfinite(number) else None


def model_summary(
    metrics_path: PathLike, attack_path: PathLike, propagation_path: PathLike, locality_path: PathLike
) -> dict[str, Any]:
    """Headline numbers of one model.

    Returns a flat dict: test accuracy, attacked images, attack success rate,
    mean queries, the locality success rate at each Chebyshev distance with its
    random-position baseline, and the peak / spread of the last captured layer's
    normalised PMmax averaged over successful attacks.

    The four files must belong together: the metrics' ``model_sha256`` and ``test_digest``
    those of the attack, and the propagation and locality files made from that attack
    (:mod:`onepixel.lineage`); otherwise a one-line DataError names the two files.
    """
    metrics = read_json(metrics_path, kind="metrics")
    attack = open_netcdf(attack_path, kind="attack", required=("queries", *(name for name, _ in ATTACK_ROWS)))
    locality = open_netcdf(locality_path, kind="locality", required=("success_rate", "baseline_success_rate"))
    prop = open_netcdf(propagation_path, kind="propagation", required=("peak", "spread"))
    _check_lineage(metrics, attack, prop, locality, metrics_path, attack_path, propagation_path, locality_path)

    success = attack["success"].values.astype(bool)
    out: dict[str, Any] = {
        "test_accuracy": _finite(metrics["test_accuracy"]),
        "attacked": int(success.size),
        "attack_success_rate": _finite(success.mean()) if success.size else None,
        "mean_queries": _finite(attack["queries"].values.mean()) if success.size else None,
        "baseline_success_rate": _finite(locality["baseline_success_rate"].values),
    }
    for d, rate in zip(locality["distance"].values, locality["success_rate"].values, strict=True):
        out[f"locality_d{int(d)}"] = _finite(rate)
    succeeded = prop["success"].values.astype(bool)
    last = prop["peak"].isel(layer=-1).values[succeeded]
    spread = prop["spread"].isel(layer=-1).values[succeeded]
    out["last_layer_peak"] = _finite(np.nanmean(last)) if np.isfinite(last).any() else None
    out["last_layer_spread"] = _finite(np.nanmean(spread)) if np.isfinite(spread).any() else None
    return out


def _check_lineage(
    metrics: Mapping[str, Any],
    attack: Any,
    prop: Any,
    locality: Any,
    metrics_path: PathLike,
    attack_path: PathLike,
    propagation_path: PathLike,
    locality_path: PathLike,
) -> None:
    """Refuse one model's metrics, propagation or locality file when it names another model, test set or attack."""
    made_from = {
        **require(attack.attrs, ("model_sha256", "test_digest"), attack_path, "attack"),
        "attack_digest": attack_digest(attack),
    }
    check_same(
        "summary", metrics_path, require(metrics, LINEAGE["metrics"], metrics_path, "train"), attack_path, made_from
    )
    for path, ds, kind in ((propagation_path, prop, "propagation"), (locality_path, locality, "locality")):
        check_same("summary", path, require(ds.attrs, LINEAGE[kind], path, kind), attack_path, made_from)


def locality_rows(model: str, locality_path: PathLike) -> list[dict[str, Any]]:
    """One row per ring distance of a locality file: the success rate with its
    95 % interval (``ci_low``, ``ci_high``) and the random-position baseline."""
    locality = open_netcdf(
        locality_path, kind="locality", required=("success_rate", "success_rate_ci", "baseline_success_rate")
    )
    rate = locality["success_rate"]
    ci = locality["success_rate_ci"].transpose("distance", "bound")  # bound = low, high
    low, high = ci.isel(bound=0).values, ci.isel(bound=1).values
    baseline = _finite(locality["baseline_success_rate"].values)
    return [
        {
            "model": model,
            "distance": int(d),
            "success_rate": _finite(r),
            "ci_low": _finite(lo),
            "ci_high": _finite(hi),
            "baseline_success_rate": baseline,
        }
        for d, r, lo, hi in zip(rate["distance"].values, rate.values, low, high, strict=True)
    ]


#: the shares of a DE-vs-sweep comparison that summary.json keeps (rates; comparison.json has counts and intervals)
GROUND_TRUTH_SHARES = ("both", "de_only", "sweep_only", "neither", "de_success", "sweep_success", "de_found")


def comparison_numbers(comparison_path: PathLike, attacks: Mapping[str, PathLike]) -> dict[str, Any]:
    """The headline numbers of ``comparison.json`` (stage ``comparison``) for summary.json.

    ``attacks``: ``{model: attack file}`` of the main attack; ``comparison.json`` must have been
    made from these files (the ``attack_digest`` it records for each model's ``main`` attack).

    Returns ``{"attacks": {model: {attack: {success_rate, success_low, success_high, queries_mean}}},
    "ground_truth": {model: {de attack: {both, de_only, ..., de_found, de_queries_per_success,
    sweep_queries_per_success}}}}`` (numbers only).
    """
    numbers = read_json(comparison_path, kind="comparison")
    compared = numbers.get("models", {})
    out: dict[str, Any] = {"attacks": {}, "ground_truth": {}}
    for model, attack_path in attacks.items():
        if model not in compared:
            raise DataError(f"summary: {comparison_path} has no model {model}; re-run the comparison")
        recorded = compared[model]["attacks"]["main"].get("attack_digest")
        made_from = attack_digest(open_netcdf(attack_path, kind="attack"))
        if recorded != made_from:
            raise DataError(
                f"summary: {comparison_path} was made from another attack of {model} than {attack_path} "
                f"(attack_digest {short(recorded)} vs {short(made_from)}); re-run the comparison"
            )
        out["attacks"][model] = {
            name: {
                "success_rate": entry["success"]["rate"],
                "success_low": entry["success"]["ci"][0],
                "success_high": entry["success"]["ci"][1],
                "queries_mean": entry["queries_mean"],
            }
            for name, entry in compared[model]["attacks"].items()
        }
        out["ground_truth"][model] = {
            name: {
                **{key: truth[key]["rate"] for key in GROUND_TRUTH_SHARES},
                "de_queries_per_success": truth["de_queries_per_success"],
                "sweep_queries_per_success": truth["sweep_queries_per_success"],
            }
            for name, truth in compared[model]["ground_truth"].items()
        }
    if not any(out["ground_truth"].values()):
        del out["ground_truth"]
    return out


def _write_csv(rows: list[dict[str, Any]], path: PathLike) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _percent(value: Any) -> str:
    return "&ndash;" if value is None else f"{100 * value:.1f} %"


_HTML_COLUMNS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("test_accuracy", "test accuracy", _percent),
    ("attacked", "attacked images", str),
    ("attack_success_rate", "one-pixel success", _percent),
    ("mean_queries", "mean queries", lambda v: "&ndash;" if v is None else f"{v:.0f}"),
    ("baseline_success_rate", "same colour, random position", _percent),
    ("last_layer_peak", "last layer: PMmax peak", lambda v: "&ndash;" if v is None else f"{v:.3f}"),
    ("last_layer_spread", "last layer: spread", _percent),
]


def summary_html(summary: Mapping[str, Any], locality: list[dict[str, Any]], dataset: str = "") -> str:
    """A self-contained HTML page with the metrics table of every model and the
    locality table (success rate per distance with its 95 % interval)."""
    models = summary["models"]
    distances = sorted({row["distance"] for row in locality})
    head = [
        "model",
        *(label for _, label, _ in _HTML_COLUMNS[:4]),
        *(f"same colour at d&nbsp;=&nbsp;{d}" for d in distances),  # no line break inside "d = 1"
        *(label for _, label, _ in _HTML_COLUMNS[4:]),
    ]
    body = []
    for name, row in models.items():
        cells = [
            html.escape(name),
            *(fmt(row.get(key)) for key, _, fmt in _HTML_COLUMNS[:4]),
            *(_percent(row.get(f"locality_d{d}")) for d in distances),
            *(fmt(row.get(key)) for key, _, fmt in _HTML_COLUMNS[4:]),
        ]
        body.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    loc_body = [
        "<tr>"
        + "".join(
            f"<td>{cell}</td>"
            for cell in (
                html.escape(row["model"]),
                row["distance"],
                _percent(row["success_rate"]),
                "&ndash;" if row["ci_low"] is None else f"{_percent(row['ci_low'])} &ndash; {_percent(row['ci_high'])}",
                _percent(row["baseline_success_rate"]),
            )
        )
        + "</tr>"
        for row in locality
    ]
    prov = summary.get("provenance", {})
    made = ", ".join(f"{key} {html.escape(str(prov[key]))}" for key in ("git_commit", "config_digest") if key in prov)
    title = f"One-pixel attack metrics{': ' + html.escape(dataset) if dataset else ''}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            f'<html lang="en"><head><meta charset="utf-8"><title>{title}</title>',
            (
                "<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}"
                "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f0f0f0}"
                "td:first-child{text-align:left}caption{text-align:left;font-weight:bold;margin-bottom:.4em}</style>"
            ),
            "</head><body>",
            f"<h1>{title}</h1>",
            '<table id="models"><caption>Per model: accuracy, attack success, locality and propagation</caption>',
            "<tr>" + "".join(f"<th>{label}</th>" for label in head) + "</tr>",
            *body,
            "</table>",
            (
                '<table id="locality"><caption>Success rate of the attack\'s colour at distance d from the attacked '
                "pixel (the rings of locality.rings, Chebyshev by default), with its 95 % bootstrap interval over "
                "images</caption>"
            ),
            "<tr><th>model</th><th>d</th><th>success rate</th><th>95 % interval</th><th>random position</th></tr>",
            *loc_body,
            "</table>",
            f"<p>Made from {made}.</p>" if made else "",
            "</body></html>",
            "",
        ]
    )


def write_summary(
    metrics: Mapping[str, PathLike],
    attacks: Mapping[str, PathLike],
    propagations: Mapping[str, PathLike],
    localities: Mapping[str, PathLike],
    out_path: PathLike,
    models_csv: PathLike | None = None,
    locality_csv: PathLike | None = None,
    html_path: PathLike | None = None,
    dataset: str = "",
    provenance_path: PathLike | None = None,
    comparison: PathLike | None = None,
) -> dict[str, Any]:
    """Write ``{"models": {name: model_summary(...)}}`` as JSON (numbers only, the DVC metrics) and return
    it with its ``provenance`` added.

    The provenance (config, code version, device) goes to ``provenance_path``
    (format ``onepixel-summary``), so that ``dvc metrics show`` is a table of numbers.
    Optionally also, for ``dvc plots`` and the report: ``models_csv`` (one row per
    model with the columns of :func:`model_summary`), ``locality_csv`` (one row per
    model and distance, :func:`locality_rows`) and ``html_path`` (:func:`summary_html`).
    With ``comparison`` (the comparison.json of a study with further attacks) summary.json
    also holds :func:`comparison_numbers`. Every file is written atomically.
    """
    summary: dict[str, Any] = {
        "models": {
            name: model_summary(metrics[name], attacks[name], propagations[name], localities[name]) for name in metrics
        },
    }
    if comparison is not None:
        summary.update(comparison_numbers(comparison, attacks))
    locality = [row for name in metrics for row in locality_rows(name, localities[name])]
    if models_csv is not None:
        _write_csv([{"model": name, **row} for name, row in summary["models"].items()], models_csv)
    if locality_csv is not None:
        _write_csv(locality, locality_csv)
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    made = {"metrics": os.path.basename(os.fspath(out_path)), "models": list(metrics), "provenance": provenance()}
    if provenance_path is not None:
        made = write_json(made, provenance_path, kind="summary")
    summary["provenance"] = made["provenance"]
    if html_path is not None:
        with atomic_path(html_path) as tmp:
            tmp.write_text(summary_html(summary, locality, dataset))
    return summary


def summary_stage(job: Job) -> dict[str, Any]:
    """The summary of every model: ``summary.json`` (DVC metrics) and its ``provenance.json``, the plot
    tables and the metrics page."""
    return write_summary(
        job.inputs["metrics"],
        job.inputs["attack"],
        job.inputs["propagation"],
        job.inputs["locality"],
        job.output("summary"),
        models_csv=job.output("models_csv"),
        locality_csv=job.output("locality_csv"),
        html_path=job.output("table"),
        dataset=job.cfg["dataset"]["name"],
        provenance_path=job.output("provenance"),
        comparison=job.inputs.get("comparison"),
    )
