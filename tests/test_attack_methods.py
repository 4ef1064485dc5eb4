"""attack.method through the stages: the exhaustive sweep and PGD write attack files that capture and
propagation read unchanged; locality applies to pixel attacks only."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from onepixel.attack import PGD, ExhaustiveAttack, load_attack
from onepixel.attack.stage import stored_config
from onepixel.config import validate_section
from onepixel.errors import ConfigError
from onepixel.models import load_checkpoint
from onepixel.stages import run_stage


def _attack(toy, out, **cfg):
    run_stage(
        "attack",
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"},
        {"out": out},
        {"attack": {"num_images": 6, "batch_size": 500, **cfg}, "device": "cpu"},
    )
    return load_attack(out)


def test_a_de_attack_records_what_it_recorded_before_other_methods():
    cfg = validate_section("attack", {})
    assert cfg["method"] == "de"
    stored = stored_config(cfg)
    assert "method" not in stored and "eps" not in stored and "colors" not in stored and "population" in stored
    pgd = stored_config(validate_section("attack", {"method": "pgd"}))
    assert {"method", "eps", "alpha", "steps", "random_start"} <= set(pgd) and "population" not in pgd


def test_the_exhaustive_stage_is_the_sweep(toy, tmp_path):
    ds = _attack(toy, tmp_path / "sweep.nc", method="exhaustive", colors="all")
    assert json.loads(ds.attrs["attack_config"])["method"] == "exhaustive"
    model, _ = load_checkpoint(toy / "lenet.pt")
    from onepixel.data import load_dataset

    test = load_dataset(toy / "test.nc")
    ids = torch.from_numpy(ds["sample_id"].values)
    images = torch.from_numpy(test["image"].values)[ids]
    labels = torch.from_numpy(test["label"].values)[ids]
    sweep = ExhaustiveAttack(model.eval(), colors="all").run(images, labels)
    np.testing.assert_array_equal(ds["success"].values, sweep.result.success.numpy())
    np.testing.assert_array_equal(ds["queries"].values, np.full(6, 64 * 256))
    np.testing.assert_array_equal(ds["adversarial"].values, sweep.result.adversarial.numpy())
    # the sweep's full vulnerability maps travel in the attack file
    np.testing.assert_array_equal(ds["sweep_fooling"].values, sweep.n_fooling.numpy())
    np.testing.assert_array_equal(ds["sweep_fooled"].values, sweep.fooled_map.numpy().astype(np.uint8))
    np.testing.assert_array_equal(ds["sweep_min_true_prob"].values, sweep.min_true_prob.numpy())
    assert (ds["sweep_fooling"].values > 0).tolist() == ds["success"].values.tolist()


def test_pgd_through_capture_and_propagation_and_no_locality(toy, tmp_path):
    ds = _attack(toy, tmp_path / "pgd.nc", method="pgd", steps=5)
    model, _ = load_checkpoint(toy / "lenet.pt")
    from onepixel.data import load_dataset

    test = load_dataset(toy / "test.nc")
    ids = torch.from_numpy(ds["sample_id"].values)
    expected = PGD(model.eval(), steps=5).run(
        torch.from_numpy(test["image"].values)[ids], torch.from_numpy(test["label"].values)[ids], ids=ids
    )
    np.testing.assert_array_equal(ds["adversarial"].values, expected.adversarial.numpy())
    changed = np.abs(ds["adversarial"].values.astype(int) - test["image"].values[ids.numpy()].astype(int))
    assert changed.max() == 8 and (changed > 0).sum(axis=(1, 2, 3)).min() > 1  # L-inf 8/255: many pixels
    files = {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc", "attack": tmp_path / "pgd.nc"}
    run_stage("capture", files, {"out": tmp_path / "cubes"}, {"device": "cpu"})
    prop = run_stage("propagation", {"cubes": tmp_path / "cubes"}, {"out": tmp_path / "prop.nc"}, {})
    assert prop.sizes["sample"] == 6 and float(prop["peak"].max()) > 0
    loc = run_stage("locality", files, {"out": tmp_path / "loc.nc"}, {"device": "cpu"})
    assert loc.sizes["sample"] == 0  # locality moves one pixel: not for an attack that changes them all


def test_a_bad_method_is_one_line():
    with pytest.raises(
        ConfigError, match=r"^attack.method: 'cw' is not allowed; allowed values: de, exhaustive, fgsm, pgd"
    ):
        validate_section("attack", {"method": "cw"})
