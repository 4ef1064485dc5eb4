"""Tests of the locality table, receptive-field overlay, ERF and vulnerability-map figures."""

from __future__ import annotations

import csv
import types

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import onepixel.models
from helpers import fake_checkpoint, png_size, save_attack_rows
from onepixel.errors import ConfigError
from onepixel.figures import plot_vulnerability_examples
from onepixel.figures.vulnerability import _example_rows
from onepixel.files import open_netcdf, write_netcdf
from onepixel.stages import run_stage

N = 6


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 3)
        self.feature_layers = ["conv1", "conv2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Test set, attack rows (4 successful), locality and vulnerability files of a small net on 8x8 images."""
    tmp = tmp_path_factory.mktemp("run")
    net = SmallNet().eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 1, 8, 8), dtype=np.uint8)
    test = xr.Dataset(
        {"image": (("sample", "channel", "y", "x"), images), "label": ("sample", np.zeros(10, np.int64))},
        coords={"class_name": ("class", ["zero", "one", "two"])},
    )
    attack = xr.Dataset(
        {
            "success": ("sample", np.array([True, False, True, True, False, True])),
            "pixel_x": (("sample", "pixel"), rng.integers(0, 8, (N, 1))),
            "pixel_y": (("sample", "pixel"), rng.integers(0, 8, (N, 1))),
            "color": (("sample", "pixel", "channel"), np.full((N, 1, 1), 255, np.uint8)),
            "true_class": ("sample", np.zeros(N, np.int64)),
            "target_class": ("sample", np.full(N, -1)),
        },
        coords={"sample_id": ("sample", np.arange(N) + 1)},
    )
    write_netcdf(test, tmp / "test.nc", kind="dataset")
    patch = pytest.MonkeyPatch()
    save_attack_rows(attack, test, tmp / "a.nc", fake_checkpoint(tmp / "c.pt"))
    patch.setattr(onepixel.models, "load_checkpoint", lambda p, map_location, **_: (net, {"arch": "small"}))
    run_stage(
        "locality",
        {"checkpoint": tmp / "c.pt", "test": tmp / "test.nc", "attack": tmp / "a.nc"},
        {"out": tmp / "loc.nc"},
        {"locality": {"max_distance": 3}, "device": "cpu"},
    )
    run_stage(
        "vulnerability",
        {"checkpoint": tmp / "c.pt", "test": tmp / "test.nc", "attack": tmp / "a.nc"},
        {"out": tmp / "vul.nc"},
        {"device": "cpu"},
    )
    yield types.SimpleNamespace(tmp=tmp, images=images)
    patch.undo()


def test_stage_writes_table_and_figures(run, tmp_path) -> None:
    files = run_stage(
        "locality_figures",
        {
            "test": run.tmp / "test.nc",
            "locality": {"small": run.tmp / "loc.nc", "again": run.tmp / "loc.nc"},
            "vulnerability": {"small": run.tmp / "vul.nc", "again": run.tmp / "vul.nc"},
        },
        {"out": tmp_path / "fig"},
        {"figures": {"examples": 2, "formats": ["png", "pdf"]}},
    )
    names = sorted(str(p.relative_to(tmp_path / "fig")) for p in files)
    expected = ["locality_table.csv", "locality_table.html"]
    expected += [
        f"{name}.{ext}"
        for name in ("receptive_fields", "erf", "small/vulnerability_maps", "again/vulnerability_maps")
        for ext in ("png", "pdf")
    ]
    assert names == sorted(expected) and all(p.is_file() for p in files)
    # 2 models side by side: (3.8 * 2 + 0.8) x (5.8 + 1.4) in at 200 dpi
    assert png_size(tmp_path / "fig" / "receptive_fields.png") == (1680, 1440)
    # 2 successful examples + the first failed attack: 3 rows
    assert png_size(tmp_path / "fig" / "small" / "vulnerability_maps.png") == (
        round((3 * 1.85 + 1.6) * 200),
        round((3 * 2.4 + 1.3) * 200),
    )
    loc = open_netcdf(run.tmp / "loc.nc", kind="locality")
    with open(tmp_path / "fig" / "locality_table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows] == ["small", "again"] and rows[0]["attacks"] == "4"
    for d in (1, 2, 3):
        assert float(rows[0][f"d{d}"]) == pytest.approx(float(loc["success_rate"].sel(distance=d)))
        assert float(rows[0][f"d{d}_low"]) == pytest.approx(float(loc["success_rate_ci"].sel(distance=d)[0]))
    assert float(rows[0]["random"]) == pytest.approx(float(loc["baseline_success_rate"]))


def test_example_rows_and_placeholder(run, tmp_path) -> None:
    vul = open_netcdf(run.tmp / "vul.nc", kind="vulnerability")
    assert (
        _example_rows(vul, 2) == [0, 2, 1] and _example_rows(vul, 0) == [1] and _example_rows(vul, 9) == [0, 2, 3, 5, 1]
    )
    (empty,) = plot_vulnerability_examples(
        vul.isel(sample=slice(0, 0)), run.images, tmp_path / "none", ["a", "b", "c"], formats=("png",)
    )
    assert png_size(empty) == (1000, 300)


def test_bad_settings(run, tmp_path) -> None:
    with pytest.raises(ConfigError, match="figures.formats"):
        run_stage(
            "locality_figures",
            {
                "test": run.tmp / "test.nc",
                "locality": {"small": run.tmp / "loc.nc"},
                "vulnerability": {"small": run.tmp / "vul.nc"},
            },
            {"out": tmp_path},
            {"figures": {"formats": ["gif"]}},
        )
    with pytest.raises(ConfigError, match="no vulnerability file given for model"):
        run_stage(
            "locality_figures",
            {
                "test": run.tmp / "test.nc",
                "locality": {"small": run.tmp / "loc.nc"},
                "vulnerability": {"other": run.tmp / "vul.nc"},
            },
            {"out": tmp_path},
        )


def test_vulnerability_map_titles_name_the_study(run, tmp_path, monkeypatch) -> None:
    import onepixel.figures.vulnerability as figures

    titles = []
    save = figures.save_figure
    monkeypatch.setattr(
        figures,
        "save_figure",
        lambda fig, base, formats: titles.append(fig._suptitle.get_text()) or save(fig, base, formats),
    )
    run_stage(
        "locality_figures",
        {
            "test": run.tmp / "test.nc",
            "locality": {"small": run.tmp / "loc.nc"},
            "vulnerability": {"small": run.tmp / "vul.nc"},
        },
        {"out": tmp_path / "fig"},
        {"dataset": {"name": "digits"}, "study": "pilot", "figures": {"examples": 1, "formats": ["png"]}},
    )
    assert len(titles) == 1 and titles[0].startswith("Vulnerability maps of small, study digits-pilot\n")
