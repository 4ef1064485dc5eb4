"""The stages chained through their files agree with an independent float64 recomputation.

A real model is trained (LeNet) or built (ResNet-20), attacked, captured and
turned into propagation maps by the library's stage functions; then the
propagation maps are recomputed from scratch with plain forward hooks on a
float64 copy of the model and compared with what the files hold.
"""

import json

import numpy as np
import pytest
import torch
import xarray as xr

from onepixel.attack import load_attack
from onepixel.data import load_dataset, prepare_dataset
from onepixel.models import build_model, load_checkpoint, save_checkpoint
from onepixel.stages import run_stage
from onepixel.train import build_kwargs_for

ATTACK = {"num_images": 6, "population": 40, "generations": 6, "seed": 3}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    return prepare_dataset("digits", out)


def _checkpoint(name, digits, tmp_path):
    train_path, test_path = digits
    path = tmp_path / f"{name}.pt"
    if name == "lenet":
        run_stage(
            "train",
            {"train": train_path, "test": test_path},
            {"checkpoint": path, "metrics": tmp_path / "metrics.json"},
            {"train": {"epochs": 6, "batch_size": 64, "seed": 0}, "device": "cpu"},
            {"model": "lenet"},
        )
    else:  # an untrained network is enough to check the arithmetic of a deep model
        torch.manual_seed(0)
        kwargs = build_kwargs_for(load_dataset(train_path))
        save_checkpoint(path, build_model(name, **kwargs), name, kwargs)
    return path


def _float64_feature_maps(model, images_u8, layers):
    captured = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.detach().clone())
        )
        for name in layers
    ]
    with torch.no_grad():
        model(torch.from_numpy(images_u8).double() / 255)
    for handle in handles:
        handle.remove()
    return captured


@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_stored_propagation_maps_match_float64_hooks(name, digits, tmp_path):
    _, test_path = digits
    checkpoint = _checkpoint(name, digits, tmp_path)
    files = {"checkpoint": checkpoint, "test": test_path}
    run_stage("attack", files, {"out": tmp_path / "attack.nc"}, {"attack": ATTACK, "device": "cpu"})
    cube_files = run_stage(
        "capture",
        {**files, "attack": tmp_path / "attack.nc"},
        {"out": tmp_path / "cubes"},
        {"capture": {"store": "cubes"}, "device": "cpu"},
    )
    prop = run_stage("propagation", {"cubes": tmp_path / "cubes"}, {"out": tmp_path / "pm.nc"})
    stored = xr.open_dataset(tmp_path / "pm.nc")

    attack = load_attack(tmp_path / "attack.nc")
    clean_u8 = load_dataset(test_path)["image"].values[attack["sample_id"].values]
    model, _ = load_checkpoint(checkpoint)
    model = model.double().eval()
    layers = [entry["layer"] for entry in json.loads((tmp_path / "cubes" / "layers.json").read_text())["layers"]]
    assert layers == list(model.feature_layers)
    assert len(cube_files) == len(layers)
    clean = _float64_feature_maps(model, clean_u8, layers)
    adv = _float64_feature_maps(model, attack["adversarial"].values, layers)

    for i, layer in enumerate(layers):
        diff = (adv[layer] - clean[layer]).abs().numpy()
        scale = clean[layer].abs().amax(dim=(1, 2, 3)).numpy()
        pm_max = diff.max(axis=1) / scale[:, None, None]
        pm_avg = diff.mean(axis=1) / scale[:, None, None]
        np.testing.assert_allclose(stored[f"pm_max_norm_{i}"].values, pm_max, rtol=1e-4, atol=1e-5, err_msg=layer)
        np.testing.assert_allclose(stored[f"pm_avg_norm_{i}"].values, pm_avg, rtol=1e-4, atol=1e-5, err_msg=layer)
        np.testing.assert_allclose(
            stored["peak"].sel(layer=layer).values, pm_max.max(axis=(1, 2)), rtol=1e-4, atol=1e-5
        )
        with xr.open_dataset(cube_files[i]) as cube:
            assert cube["clean"].shape == tuple(clean[layer].shape)
    success = attack["success"].values.astype(bool)
    assert prop.sizes["sample"] == ATTACK["num_images"]
    if success.any():
        last = len(layers) - 1
        diff = (adv[layers[-1]] - clean[layers[-1]]).abs().numpy().max(axis=1)
        scale = clean[layers[-1]].abs().amax(dim=(1, 2, 3)).numpy()
        mean_success = (diff / scale[:, None, None])[success].mean(axis=0)
        np.testing.assert_allclose(stored[f"avg_pm_max_success_{last}"].values, mean_success, rtol=1e-4, atol=1e-5)


def test_locality_rates_match_a_brute_force_loop(digits, tmp_path):
    _, test_path = digits
    checkpoint = _checkpoint("lenet", digits, tmp_path)
    files = {"checkpoint": checkpoint, "test": test_path}
    attack = run_stage(
        "attack", files, {"out": tmp_path / "attack.nc"}, {"attack": {**ATTACK, "num_images": 10}, "device": "cpu"}
    )
    locality = run_stage(
        "locality",
        {**files, "attack": tmp_path / "attack.nc"},
        {"out": tmp_path / "loc.nc"},
        {"locality": {"max_distance": 2, "random_positions": 4}, "device": "cpu"},
    )
    model, _ = load_checkpoint(checkpoint)
    images = load_dataset(test_path)["image"].values
    fooled = {1: [0, 0], 2: [0, 0]}
    for row in np.flatnonzero(attack["success"].values):
        image = images[int(attack["sample_id"][row])]
        x0, y0 = int(attack["pixel_x"][row, 0]), int(attack["pixel_y"][row, 0])
        colour = attack["color"].values[row, 0]
        label = int(attack["true_class"][row])
        for y in range(image.shape[1]):
            for x in range(image.shape[2]):
                d = max(abs(x - x0), abs(y - y0))
                if d in fooled:
                    perturbed = image.copy()
                    perturbed[:, y, x] = colour
                    with torch.no_grad():
                        pred = int(model(torch.from_numpy(perturbed[None]).float() / 255).argmax())
                    fooled[d][0] += pred != label
                    fooled[d][1] += 1
    assert locality.sizes["sample"] == int(attack["success"].values.sum())
    for d, (hits, total) in fooled.items():
        assert int(locality["n_positions"].sel(distance=d).sum()) == total
        assert int(locality["n_fooled"].sel(distance=d).sum()) == hits
