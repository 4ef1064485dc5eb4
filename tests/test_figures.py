"""Tests of onepixel.figures: every figure is written as a real PNG of the expected size and a PDF."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import onepixel.models
from helpers import fake_checkpoint, lineage_of, png_size, save_attack_rows
from onepixel.analysis.locality import locality_analysis
from onepixel.errors import ConfigError
from onepixel.figures import (
    plot_average_pm,
    plot_locality,
    plot_pm_depth,
    plot_pm_grid,
)
from onepixel.figures.stages import example_rows
from onepixel.files import write_netcdf
from onepixel.stages import run_stage

N = 6


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 3)
        self.feature_layers = ["conv1", "conv2", "conv3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = torch.relu(conv(x))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A fake run on 8x8 images: test set, attack file, cubes, propagation and locality files."""
    tmp = tmp_path_factory.mktemp("run")
    net = SmallNet().eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    test = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), images), "label": ("sample", np.zeros(10, np.int64))},
        coords={"class_name": ("class", ["zero", "one", "two"])},
    )
    ids = np.arange(N) + 1
    px, py = rng.integers(0, 8, (N, 1)), rng.integers(0, 8, (N, 1))
    color = np.full((N, 1, 1), 255, np.uint8)
    adversarial = images[ids].copy()
    adversarial[np.arange(N), 0, py[:, 0], px[:, 0]] = 255
    with torch.no_grad():
        p_clean = torch.softmax(net(torch.from_numpy(images[ids]).float() / 255), 1).numpy()
        p_adv = torch.softmax(net(torch.from_numpy(adversarial).float() / 255), 1).numpy()
    attack = xr.Dataset(
        {
            "success": ("sample", np.array([True, False, True, True, False, True])),
            "pixel_x": (("sample", "pixel"), px),
            "pixel_y": (("sample", "pixel"), py),
            "color": (("sample", "pixel", "channel"), color),
            "true_class": ("sample", np.zeros(N, np.int64)),
            "adv_class": ("sample", np.ones(N, np.int64)),
            "target_class": ("sample", np.full(N, -1)),
            "prob_clean": (("sample", "class"), p_clean),
            "prob_adv": (("sample", "class"), p_adv),
            "adversarial": (("sample", "channel", "y", "x"), adversarial),
        },
        coords={"sample_id": ("sample", ids)},
    )
    write_netcdf(test, tmp / "test.nc", kind="dataset")
    patch = pytest.MonkeyPatch()
    save_attack_rows(attack, test, tmp / "a.nc", fake_checkpoint(tmp / "c.pt"))
    patch.setattr(onepixel.models, "load_checkpoint", lambda p, map_location, **_: (net, {}))
    run_stage(
        "capture",
        {"checkpoint": tmp / "c.pt", "test": tmp / "test.nc", "attack": tmp / "a.nc"},
        {"out": tmp / "cubes"},
        {"device": "cpu"},
    )
    prop = run_stage("propagation", {"cubes": tmp / "cubes"}, {"out": tmp / "prop.nc"})
    ok = attack["success"].values
    loc = locality_analysis(
        net, torch.from_numpy(images[ids][ok]), np.zeros(ok.sum()), px[ok], py[ok], color[ok], max_distance=3
    )
    loc.attrs.update(lineage_of(tmp / "a.nc"))  # made from this attack, as the locality stage records
    write_netcdf(loc, tmp / "loc.nc", kind="locality")
    yield types.SimpleNamespace(tmp=tmp, prop=prop, loc=loc, attack=attack, images=images)
    patch.undo()


def test_pm_grid_png_and_pdf(run, tmp_path) -> None:
    paths = plot_pm_grid(run.prop, run.attack, run.images[1], 0, tmp_path / "grid", ["zero", "one", "two"])
    assert [p.name for p in paths] == ["grid.png", "grid.pdf"]
    # 3 layers + 2 images = 5 panels on one row: (5 * 1.85 + 1.4) in x (2.2 + 0.9) in at 200 dpi
    assert png_size(paths[0]) == (2130, 620)
    assert paths[0].stat().st_size > 20_000
    assert paths[1].read_bytes()[:4] == b"%PDF"
    assert not list(tmp_path.glob(".*.tmp"))


def test_average_pm_locality_depth(run, tmp_path) -> None:
    (avg,) = plot_average_pm(run.prop, tmp_path / "avg", "small net", formats=("png",))
    (loc,) = plot_locality({"small": run.loc, "again": run.loc}, tmp_path / "loc", formats=("png",))
    (depth,) = plot_pm_depth({"small": run.prop}, tmp_path / "depth", formats=("png",))
    assert png_size(avg) == (round((3 * 1.85 + 1.4) * 200), round((2.2 + 1.1) * 200))
    assert png_size(loc) == (2300, 1000)  # (a) success rate and (b) true-class probability change, 11.5 x 5 in
    assert png_size(depth) == (2000, 920)
    for path in (avg, loc, depth):
        assert path.stat().st_size > 20_000


def test_figures_stage(run, tmp_path) -> None:
    files = run_stage(
        "figures",
        {
            "test": run.tmp / "test.nc",
            "attack": {"small": run.tmp / "a.nc"},
            "propagation": {"small": run.tmp / "prop.nc"},
            "locality": {"small": run.tmp / "loc.nc"},
        },
        {"out": tmp_path / "fig"},
        {"figures": {"examples": 5, "formats": ["png", "pdf"]}},
    )
    names = sorted(str(p.relative_to(tmp_path / "fig")) for p in files)
    expected = [f"small/pm_grid_{k}.{ext}" for k in range(5) for ext in ("png", "pdf")]
    expected += [f"small/average_pm.{ext}" for ext in ("png", "pdf")]
    expected += [f"{name}.{ext}" for name in ("locality", "pm_depth") for ext in ("png", "pdf")]
    assert names == sorted(expected)
    assert all(p.is_file() for p in files)
    # 4 successful attacks: example 4 is the failed attack that came closest, drawn as a grid like the others
    assert png_size(tmp_path / "fig" / "small" / "pm_grid_4.png") == png_size(
        tmp_path / "fig" / "small" / "pm_grid_0.png"
    )
    examples = example_rows(xr.open_dataset(run.tmp / "a.nc"), 6)
    assert len(examples) == len(set(examples)) == min(6, xr.open_dataset(run.tmp / "a.nc").sizes["sample"])


def test_bad_format(run, tmp_path) -> None:
    with pytest.raises(ConfigError, match="figures.formats"):
        plot_pm_depth({"small": run.prop}, tmp_path / "x", formats=("gif",))


def test_pm_grid_of_a_targeted_k_pixel_attack_names_marks_every_pixel_and_the_target(run, tmp_path, monkeypatch):
    import onepixel.figures.propagation as figures

    px0, py0 = run.attack["pixel_x"].values[:, 0], run.attack["pixel_y"].values[:, 0]
    px = np.stack([px0, (px0 + 4) % 8], 1)
    py = np.stack([py0, (py0 + 3) % 8], 1)
    attack = run.attack.drop_vars(["pixel_x", "pixel_y", "color"]).assign(
        pixel_x=(("sample", "pixel"), px),
        pixel_y=(("sample", "pixel"), py),
        color=(("sample", "pixel", "channel"), np.full((N, 2, 1), 255, np.uint8)),
        target_class=("sample", np.full(N, 2)),
    )
    drawn = []
    save = figures.save_figure
    monkeypatch.setattr(
        figures, "save_figure", lambda fig, base, formats: drawn.append(fig) or save(fig, base, formats)
    )
    (png,) = plot_pm_grid(run.prop, attack, run.images[1], 0, tmp_path / "grid", ["zero", "one", "two"], ("png",))
    assert png.stat().st_size > 20_000
    fig = drawn[0]
    title = fig._suptitle.get_text()
    assert "targeted 2-pixel attack (target: two)" in title
    assert f"pixels ({px[0, 0]}, {py[0, 0]}), ({px[0, 1]}, {py[0, 1]}) as (x, y)" in title
    adversarial, layers = fig.axes[1], fig.axes[2:5]
    assert "target: two (p=" in adversarial.get_title()
    assert all(line.get_xdata().tolist() == px[0].tolist() for line in adversarial.lines)  # both pixels circled
    for ax, height, width in zip(layers, run.prop["layer_height"].values, run.prop["layer_width"].values, strict=True):
        top, left = ax.lines[:2]  # one triangle per pixel on the top and on the left edge
        assert top.get_xdata().tolist() == (px[0] * width // 8).tolist()
        assert left.get_ydata().tolist() == (py[0] * height // 8).tolist()


def test_pm_grid_examples_are_successes_then_the_closest_failures() -> None:
    prob_adv = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45], [0.3, 0.7]])
    attack = xr.Dataset(
        {
            "success": ("sample", [False, True, False, False, True]),
            "prob_adv": (("sample", "class"), prob_adv),
            "true_class": ("sample", [0, 0, 0, 0, 0]),
            "target_class": ("sample", [-1, -1, -1, -1, -1]),
        }
    )
    assert example_rows(attack, 1) == [1]
    assert example_rows(attack, 4) == [1, 4, 3, 2]  # then failures by true-class probability 0.55, 0.6, 0.9
    targeted = attack.assign(target_class=("sample", [1, 1, 1, 1, 1]), success=("sample", [False] * 5))
    assert example_rows(targeted, 2) == [1, 4]  # target-class probability 0.8, 0.7


def test_pm_grid_scale_is_the_papers_unless_every_value_is_small() -> None:
    from onepixel.figures.propagation import SMALL_PM, grid_scale

    assert grid_scale([np.array([[0.0, 0.6]]), np.array([[2.5]])]) == 1.0  # the paper's 0-1, larger values clipped
    assert grid_scale([np.array([[0.0, 0.03]]), np.array([[np.nan, 0.07]])]) == 0.07  # a 224x224 model's one pixel
    assert grid_scale([np.zeros((2, 2))]) == 1.0 and grid_scale([np.full((2, 2), np.nan)]) == 1.0
    assert grid_scale([np.array([[SMALL_PM]])]) == 1.0
