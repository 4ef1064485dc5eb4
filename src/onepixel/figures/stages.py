"""The two figure stages of the workflow: propagation/locality figures, and locality/receptive-field figures."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import xarray as xr

from onepixel.analysis.locality import write_locality_table
from onepixel.attack import load_attack
from onepixel.data import load_dataset
from onepixel.figures.common import placeholder
from onepixel.figures.locality import plot_locality
from onepixel.figures.propagation import plot_average_pm, plot_pm_depth, plot_pm_grid
from onepixel.figures.receptive_fields import plot_erf, plot_receptive_fields
from onepixel.figures.vulnerability import plot_vulnerability_examples, vulnerability_title
from onepixel.files import open_netcdf
from onepixel.lineage import attack_lineage, check_same, check_test_set, recorded_lineage
from onepixel.stages import Job

log = logging.getLogger(__name__)


def figures_stage(job: Job) -> list[Path]:
    """All figures of one dataset.

    Per model: ``{model}/pm_grid_{k}`` for ``examples`` attacks (:func:`example_rows`)
    (a placeholder saying so when there are fewer) and ``{model}/average_pm``;
    across models: ``locality`` and ``pm_depth``. Each in every format.

    Before any figure, each model's propagation and locality files must have been
    made from its attack file (same ``model_sha256``, ``test_digest`` and
    ``attack_digest``), and the attack on the given test set.
    """
    cfg = job.cfg["figures"]
    dataset_name, test_path, out_dir = job.cfg["dataset"]["name"], job.input("test"), job.output()
    attack_paths, propagation_paths, locality_paths = (
        job.inputs["attack"],
        job.inputs["propagation"],
        job.inputs["locality"],
    )
    models = list(attack_paths)
    examples, formats = cfg["examples"], tuple(cfg["formats"])
    out = Path(out_dir)
    test = load_dataset(test_path)
    attacks = {model: load_attack(attack_paths[model]) for model in models}
    for model in models:  # the files of each model belong together, before any work
        made_from = attack_lineage(attacks[model])
        check_test_set("figures", test_path, test, attack_paths[model], made_from["test_digest"])
        for paths, kind in ((propagation_paths, "propagation"), (locality_paths, "locality")):
            check_same("figures", paths[model], recorded_lineage(paths[model], kind), attack_paths[model], made_from)
    class_names = [str(c) for c in test["class_name"].values]
    written: list[Path] = []
    summaries: dict[str, xr.Dataset] = {}
    for model in models:
        attack = attacks[model]
        prop = open_netcdf(
            propagation_paths[model],
            kind="propagation",
            required=("peak", "spread", "pixel_x_layer", "n_averaged_success"),
        )
        rows = example_rows(attack, examples)
        for k in range(examples):
            base = out / model / f"pm_grid_{k}"
            if k < len(rows):
                image = test["image"].values[int(prop["sample_id"].values[rows[k]])]
                written += plot_pm_grid(prop, attack, image, rows[k], base, class_names, formats)
            else:
                written += placeholder(base, f"{model}: {len(rows)} attack(s), so no example {k + 1} to draw", formats)
        written += plot_average_pm(prop, out / model / "average_pm", f"{model} on {dataset_name}", formats)
        summaries[model] = prop[["peak", "spread"]]
    localities = {
        m: open_netcdf(locality_paths[m], kind="locality", required=("success_rate", "success_rate_ci")) for m in models
    }
    written += plot_locality(
        localities, out / "locality", formats, title=f"Locality of one-pixel vulnerability ({dataset_name})"
    )
    written += plot_pm_depth(summaries, out / "pm_depth", formats, title=f"Propagation through depth ({dataset_name})")
    log.info("wrote %d figure files under %s", len(written), out)
    return written


def example_rows(attack: xr.Dataset, examples: int) -> list[int]:
    """The attacks drawn as PM grids: the first ``examples`` successful ones, then the failed ones that came closest.

    Closest: the lowest true-class probability on the adversarial image (for
    targeted attacks, the highest target-class probability). A study whose model
    no pixel fools (e.g. fresh weights at 224x224) still shows how the best
    perturbation found propagates; the figure's title says it failed.
    """
    success = attack["success"].values.astype(bool)
    prob = attack["prob_adv"].values
    true_c, target = attack["true_class"].values.astype(int), attack["target_class"].values.astype(int)
    rows = np.arange(len(success))
    closeness = np.where(target >= 0, -prob[rows, np.maximum(target, 0)], prob[rows, true_c])
    failed = np.flatnonzero(~success)
    failed = failed[np.argsort(closeness[failed], kind="stable")]
    return [*np.flatnonzero(success)[:examples].tolist(), *failed.tolist()][:examples]


def locality_figures_stage(job: Job) -> list[Path]:
    """Locality table, receptive-field overlay, ERF figure and vulnerability-map examples of one dataset.

    Writes ``locality_table.csv`` / ``.html``, ``receptive_fields``, ``erf`` and
    ``{model}/vulnerability_maps`` (each figure in every format) under ``out_dir``.

    Before any work, each model's vulnerability file must have been made from the
    same model, test set and attack as its locality file, and that on the given test set.
    """
    cfg = job.cfg["figures"]
    dataset_name, test_path, out_dir = job.cfg["dataset"]["name"], job.input("test"), job.output()
    locality_paths, vulnerability_paths = job.inputs["locality"], job.inputs["vulnerability"]
    models = list(locality_paths)
    examples, formats = cfg["examples"], tuple(cfg["formats"])
    out = Path(out_dir)
    test = load_dataset(test_path)
    for model in models:  # the files of each model belong together, before any work
        made_from = recorded_lineage(locality_paths[model], "locality")
        check_test_set("locality-figures", test_path, test, locality_paths[model], made_from["test_digest"])
        vulnerability = recorded_lineage(vulnerability_paths[model], "vulnerability")
        check_same("locality-figures", vulnerability_paths[model], vulnerability, locality_paths[model], made_from)
    class_names = [str(c) for c in test["class_name"].values]
    localities = {
        m: open_netcdf(locality_paths[m], kind="locality", required=("success_rate", "success_rate_ci")) for m in models
    }
    vulns = {
        m: open_netcdf(
            vulnerability_paths[m], kind="vulnerability", required=("fooled", "rate_success", "rf_radius", "erf")
        )
        for m in models
    }
    write_locality_table(localities, out / "locality_table.csv", out / "locality_table.html")
    written = [out / "locality_table.csv", out / "locality_table.html"]
    written += plot_receptive_fields(
        vulns,
        localities,
        out / "receptive_fields",
        formats,
        title=f"How far does a one-pixel vulnerability reach? ({dataset_name})",
    )
    written += plot_erf(
        vulns, out / "erf", formats, title=f"Effective receptive fields of the last feature layer ({dataset_name})"
    )
    for model in models:
        written += plot_vulnerability_examples(
            vulns[model],
            test["image"].values,
            out / model / "vulnerability_maps",
            class_names,
            examples,
            formats,
            title=vulnerability_title(model, job.cfg),
        )
    log.info("wrote %d locality / receptive-field files under %s", len(written), out)
    return written
