"""The summary's tables for `dvc plots` and the report (onepixel.summary)."""

import csv

import numpy as np
import pytest
import xarray as xr

from onepixel.errors import DataError
from onepixel.files import write_netcdf
from onepixel.summary import _write_csv, locality_rows, summary_html


def _locality(path, rates, ci=True):
    data = {"success_rate": ("distance", np.array(rates)), "baseline_success_rate": ((), 0.05)}
    if ci:
        bounds = np.array([[r - 0.1, r + 0.1] for r in rates])
        data["success_rate_ci"] = (("distance", "bound"), bounds)
    ds = xr.Dataset(data, coords={"distance": np.arange(1, len(rates) + 1), "bound": ["low", "high"]})
    write_netcdf(ds, path, kind="locality")
    return path


def test_locality_rows_one_per_distance_with_interval_and_baseline(tmp_path):
    rows = locality_rows("lenet", _locality(tmp_path / "l.nc", [0.5, 0.25]))
    assert rows == [
        {
            "model": "lenet",
            "distance": 1,
            "success_rate": 0.5,
            "ci_low": 0.4,
            "ci_high": 0.6,
            "baseline_success_rate": 0.05,
        },
        {
            "model": "lenet",
            "distance": 2,
            "success_rate": 0.25,
            "ci_low": 0.15,
            "ci_high": 0.35,
            "baseline_success_rate": 0.05,
        },
    ]
    with pytest.raises(DataError, match=r"n.nc: missing variable\(s\) success_rate_ci of a onepixel-locality/2 file"):
        locality_rows("lenet", _locality(tmp_path / "n.nc", [0.5], ci=False))


def test_csv_leaves_missing_values_empty(tmp_path):
    _write_csv([{"model": "a", "x": 0.5}, {"model": "b", "x": None, "y": 2}], tmp_path / "t.csv")
    with open(tmp_path / "t.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [{"model": "a", "x": "0.5", "y": ""}, {"model": "b", "x": "", "y": "2"}]
    assert list(tmp_path.iterdir()) == [tmp_path / "t.csv"]  # written atomically, nothing left behind


def test_summary_html_tables_show_every_model_and_distance():
    summary = {
        "models": {
            "lenet": {
                "test_accuracy": 0.9712,
                "attacked": 100,
                "attack_success_rate": 0.63,
                "mean_queries": 1234.4,
                "baseline_success_rate": 0.042,
                "locality_d1": 0.137,
                "last_layer_peak": 0.31,
                "last_layer_spread": None,
            }
        },
        "provenance": {"git_commit": "abc123", "config_digest": "0123456789abcdef"},
    }
    rows = [
        {
            "model": "lenet",
            "distance": 1,
            "success_rate": 0.137,
            "ci_low": 0.1,
            "ci_high": 0.2,
            "baseline_success_rate": 0.042,
        }
    ]
    page = summary_html(summary, rows, "digits")
    assert (
        "<tr><td>lenet</td><td>97.1 %</td><td>100</td><td>63.0 %</td><td>1234</td><td>13.7 %</td>"
        "<td>4.2 %</td><td>0.310</td><td>&ndash;</td></tr>"
    ) in page
    assert "<tr><td>lenet</td><td>1</td><td>13.7 %</td><td>10.0 % &ndash; 20.0 %</td><td>4.2 %</td></tr>" in page
    assert "git_commit abc123, config_digest 0123456789abcdef" in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
