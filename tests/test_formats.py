"""Every file onepixel writes carries its format, ``onepixel-<kind>/<version>``, and every reader refuses another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from onepixel.errors import DataError
from onepixel.files import open_netcdf, read_json, write_json, write_netcdf
from onepixel.formats import FILES, FORMAT_VERSION, check_format, format_name

REPO = Path(__file__).resolve().parents[1]
KINDS = list(FORMAT_VERSION)


def _other(kind: str) -> str:
    return next(k for k in KINDS if k != kind)


def _refusal(call, *args, **kwargs) -> str:
    """The message of the DataError that ``call`` raises; it must be one line."""
    with pytest.raises(DataError) as err:
        call(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# the registry and its documentation


def test_registry() -> None:
    assert set(KINDS) >= {
        "dataset",
        "metrics",
        "selection",
        "attack",
        "cube",
        "layers",
        "propagation",
        "locality",
        "vulnerability",
        "summary",
        "comparison",
    }
    assert set(FILES) == set(KINDS)
    # version 2: every result records what it was made from (onepixel.lineage); summary.json holds
    # numbers only, its provenance is provenance.json
    assert {kind: version for kind, version in FORMAT_VERSION.items() if version != 2} == {"dataset": 1}
    assert format_name("locality") == "onepixel-locality/2"
    with pytest.raises(ValueError, match="unknown file kind 'checkpoint'"):
        format_name("checkpoint")


def test_docs_list_every_format() -> None:
    docs = (REPO / "docs" / "architecture.md").read_text()
    section = docs.split("### Format versions", 1)[1].split("\n## ", 1)[0]
    for kind in KINDS:
        assert f"`{format_name(kind)}`" in section, kind


# ---------------------------------------------------------------------------
# the messages


def test_check_format_messages() -> None:
    check_format("onepixel-cube/2", "cube", "c.nc")
    assert _refusal(check_format, "onepixel-attack/2", "locality", "results/x/locality/lenet.nc") == (
        "results/x/locality/lenet.nc: is a onepixel-attack/2 file, expected onepixel-locality/2"
    )
    assert _refusal(check_format, None, "locality", "l.nc") == (
        "l.nc: has no onepixel format attribute (not written by onepixel, or by a development version before "
        "formats were recorded); expected onepixel-locality/2"
    )
    assert _refusal(check_format, "onepixel-locality/3", "locality", "l.nc") == (
        "l.nc: is onepixel-locality/3, this onepixel reads onepixel-locality/2; written by a newer onepixel: "
        "upgrade onepixel, or re-run the stage that wrote it"
    )
    assert _refusal(check_format, "onepixel-locality/0", "locality", "l.nc") == (
        "l.nc: is onepixel-locality/0, this onepixel reads onepixel-locality/2; re-run the stage that wrote it"
    )
    assert _refusal(check_format, "onepixel-attack-selection-1", "selection", "s.json", '"format" key') == (
        "s.json: has \"format\" key 'onepixel-attack-selection-1', which is not a onepixel format; "
        "expected onepixel-selection/2"
    )
    assert "which is not a onepixel format" in _refusal(check_format, 3, "summary", "s.json")


# ---------------------------------------------------------------------------
# the central writers and readers


@pytest.mark.parametrize("kind", KINDS)
def test_netcdf_of_each_kind_is_stamped_and_read_only_as_that_kind(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.nc"
    write_netcdf(xr.Dataset({"v": ("s", [1.0, 2.0])}, attrs={"note": "kept"}), path, kind=kind)
    with xr.open_dataset(path) as raw:
        assert raw.attrs["format"] == format_name(kind) and raw.attrs["note"] == "kept"
    loaded = open_netcdf(path, kind=kind, required=("v",))
    assert loaded["v"].values.tolist() == [1.0, 2.0] and loaded.attrs == {"note": "kept"}  # format checked, dropped
    other = _other(kind)
    expected = f"{path}: is a {format_name(kind)} file, expected {format_name(other)}"
    assert _refusal(open_netcdf, path, kind=other) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_json_of_each_kind_is_stamped_and_read_only_as_that_kind(kind: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.json"
    write_json({"a": 1, "format": "stale"}, path, kind=kind)
    assert json.loads(path.read_text()) == {"a": 1, "format": format_name(kind)}
    assert read_json(path, kind=kind) == {"a": 1}
    other = _other(kind)
    expected = f"{path}: is a {format_name(kind)} file, expected {format_name(other)}"
    assert _refusal(read_json, path, kind=other) == expected


def test_rewriting_a_file_as_another_kind_restamps_it(tmp_path: Path) -> None:
    write_netcdf(xr.Dataset({"v": ("s", [1])}), tmp_path / "a.nc", kind="attack")
    with xr.open_dataset(tmp_path / "a.nc") as stamped:
        write_netcdf(stamped, tmp_path / "b.nc", kind="locality")
    with xr.open_dataset(tmp_path / "b.nc") as raw:
        assert raw.attrs["format"] == "onepixel-locality/2"


def test_unversioned_future_and_foreign_files_are_refused(tmp_path: Path) -> None:
    xr.Dataset({"v": ("s", [1])}).to_netcdf(tmp_path / "plain.nc")
    assert _refusal(open_netcdf, tmp_path / "plain.nc", kind="locality") == (
        f"{tmp_path / 'plain.nc'}: has no onepixel format attribute (not written by onepixel, or by a development "
        "version before formats were recorded); expected onepixel-locality/2"
    )
    xr.Dataset({"v": ("s", [1])}, attrs={"format": "onepixel-locality/3"}).to_netcdf(tmp_path / "future.nc")
    assert _refusal(open_netcdf, tmp_path / "future.nc", kind="locality").startswith(
        f"{tmp_path / 'future.nc'}: is onepixel-locality/3, this onepixel reads onepixel-locality/2; "
    )
    (tmp_path / "plain.json").write_text('{"layers": []}')
    assert _refusal(read_json, tmp_path / "plain.json", kind="layers") == (
        f'{tmp_path / "plain.json"}: has no onepixel "format" key (not written by onepixel, or by a development '
        "version before formats were recorded); expected onepixel-layers/2"
    )
    (tmp_path / "future.json").write_text('{"format": "onepixel-summary/3"}')
    assert "is onepixel-summary/3, this onepixel reads onepixel-summary/2" in _refusal(
        read_json, tmp_path / "future.json", kind="summary"
    )
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "holds a JSON list, not an object; expected onepixel-metrics/2" in _refusal(
        read_json, tmp_path / "list.json", kind="metrics"
    )
    (tmp_path / "cut.json").write_text('{"format": "onepi')
    assert "not a readable JSON file" in _refusal(read_json, tmp_path / "cut.json", kind="metrics")
    missing = tmp_path / "missing.json"
    assert _refusal(read_json, missing, kind="metrics") == f"{missing}: file not found"
    write_netcdf(xr.Dataset({"v": ("s", [1])}), tmp_path / "thin.nc", kind="attack")
    assert _refusal(open_netcdf, tmp_path / "thin.nc", kind="attack", required=("success",)) == (
        f"{tmp_path / 'thin.nc'}: missing variable(s) success of a onepixel-attack/2 file; the file holds v"
    )


# ---------------------------------------------------------------------------
# the library's readers


def test_library_readers_check_the_kind(tmp_path: Path) -> None:
    from onepixel.analysis.propagation import compute_propagation
    from onepixel.attack import load_attack
    from onepixel.attack.stage import read_selection
    from onepixel.cubes import read_layer_index
    from onepixel.data import load_dataset, make_dataset, save_dataset
    from onepixel.summary import model_summary

    data = make_dataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 1]), ["a", "b"], "toy", "test")
    save_dataset(data, tmp_path / "test.nc")
    with xr.open_dataset(tmp_path / "test.nc") as raw:
        assert raw.attrs["format"] == "onepixel-dataset/1"
    xr.testing.assert_identical(load_dataset(tmp_path / "test.nc"), data)
    test = tmp_path / "test.nc"
    assert _refusal(load_attack, test) == f"{test}: is a onepixel-dataset/1 file, expected onepixel-attack/2"
    assert _refusal(compute_propagation, [test]) == f"{test}: is a onepixel-dataset/1 file, expected onepixel-cube/2"
    write_netcdf(data, tmp_path / "data_as_attack.nc", kind="attack")
    assert "expected onepixel-dataset/1" in _refusal(load_dataset, tmp_path / "data_as_attack.nc")

    (tmp_path / "layers.json").write_text(json.dumps({"layers": [{"file": "test.nc"}]}))
    assert 'has no onepixel "format" key' in _refusal(read_layer_index, tmp_path)
    write_json({"sample_ids": [1, 2]}, tmp_path / "selection.json", kind="metrics")
    assert _refusal(read_selection, tmp_path / "selection.json") == (
        f"{tmp_path / 'selection.json'}: is a onepixel-metrics/2 file, expected onepixel-selection/2"
    )
    (tmp_path / "old.json").write_text(json.dumps({"format": "onepixel-attack-selection-1", "sample_ids": [1]}))
    old = _refusal(read_selection, tmp_path / "old.json")
    assert "which is not a onepixel format; expected onepixel-selection/2" in old
    write_json({"test_accuracy": 0.5}, tmp_path / "metrics.json", kind="summary")
    assert _refusal(model_summary, tmp_path / "metrics.json", test, test, test) == (
        f"{tmp_path / 'metrics.json'}: is a onepixel-summary/2 file, expected onepixel-metrics/2"
    )


# ---------------------------------------------------------------------------
# the stage writers: one small real run


@pytest.fixture(scope="module")
def run(toy, tmp_path_factory) -> dict[str, Path]:
    """Every stage that writes netCDF or JSON, run on the toy LeNet; the written file of each kind."""
    from onepixel.stages import run_stage

    out = tmp_path_factory.mktemp("formats")
    cfg = {
        "device": "cpu",
        "models": ["lenet"],
        "attack": {"num_images": 3, "population": 12, "generations": 2, "seed": 1},
        "locality": {"max_distance": 2, "random_positions": 3},
        "vulnerability": {"max_attacks": 2},
    }
    model = {"checkpoint": out / "lenet.pt", "test": toy / "test.nc"}  # the checkpoint the train stage writes
    run_stage(
        "train",
        {"train": toy / "test.nc", "test": toy / "test.nc", "user_checkpoint": [toy / "lenet.pt"]},
        {"checkpoint": out / "lenet.pt", "metrics": out / "metrics.json"},
        cfg,
        {"model": "lenet"},
    )
    run_stage("select_images", model, {"out": out / "selection.json"}, cfg)
    run_stage("attack", {**model, "selection": out / "selection.json"}, {"out": out / "shard.nc"}, cfg)
    run_stage(
        "merge_attack",
        {"shards": [out / "shard.nc"], "selection": out / "selection.json"},
        {"out": out / "attack.nc"},
        cfg,
    )
    attacked = {**model, "attack": out / "attack.nc"}
    run_stage("capture", attacked, {"out": out / "cubes"}, cfg)
    run_stage("propagation", {"cubes": out / "cubes"}, {"out": out / "propagation.nc"}, cfg)
    run_stage("locality", attacked, {"out": out / "locality.nc"}, cfg)
    run_stage("vulnerability", attacked, {"out": out / "vulnerability.nc"}, cfg)
    run_stage(
        "summary",
        {
            "metrics": {"lenet": out / "metrics.json"},
            "attack": {"lenet": out / "attack.nc"},
            "propagation": {"lenet": out / "propagation.nc"},
            "locality": {"lenet": out / "locality.nc"},
        },
        {
            "summary": out / "summary.json",
            "provenance": out / "provenance.json",
            "models_csv": out / "models.csv",
            "locality_csv": out / "locality.csv",
            "table": out / "summary.html",
        },
        cfg,
    )
    run_stage(
        "comparison",
        {"attack": {"main": {"lenet": out / "attack.nc"}}, "propagation": {"main": {"lenet": out / "propagation.nc"}}},
        {"out": out / "comparison.json", "table": out / "c.html", "csv": out / "c.csv", "figures": out / "cmp"},
        cfg,
    )
    return {
        "comparison": out / "comparison.json",
        "dataset": toy / "test.nc",
        "metrics": out / "metrics.json",
        "selection": out / "selection.json",
        "attack": out / "attack.nc",
        "cube": sorted((out / "cubes").glob("*.nc"))[0],
        "layers": out / "cubes" / "layers.json",
        "propagation": out / "propagation.nc",
        "locality": out / "locality.nc",
        "vulnerability": out / "vulnerability.nc",
        "summary": out / "provenance.json",  # summary.json itself holds numbers only (the DVC metrics)
        "shard": out / "shard.nc",
        "checkpoint": out / "lenet.pt",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_every_stage_file_carries_its_format(run: dict[str, Path], kind: str) -> None:
    path = run[kind]
    if path.suffix == ".json":
        found = json.loads(path.read_text())["format"]
    else:
        with xr.open_dataset(path) as ds:
            found = ds.attrs["format"]
    assert found == format_name(kind)


def test_summary_json_holds_numbers_only(run: dict[str, Path]) -> None:
    """summary.json is DVC's metrics file: `dvc metrics show` prints a column per leaf, so no strings."""

    def leaves(value: object) -> list[object]:
        return [leaf for item in value.values() for leaf in leaves(item)] if isinstance(value, dict) else [value]

    summary = json.loads((run["summary"].parent / "summary.json").read_text())
    assert set(summary) == {"models"} and set(summary["models"]) == {"lenet"}
    assert all(isinstance(leaf, int | float) or leaf is None for leaf in leaves(summary)), summary
    assert json.loads(run["summary"].read_text())["metrics"] == "summary.json"


def test_shards_and_every_cube_are_stamped(run: dict[str, Path]) -> None:
    with xr.open_dataset(run["shard"]) as shard:
        assert shard.attrs["format"] == "onepixel-attack/2"
    cubes = sorted(run["cube"].parent.glob("*.nc"))
    assert len(cubes) > 1
    for cube in cubes:
        with xr.open_dataset(cube) as ds:
            assert ds.attrs["format"] == "onepixel-cube/2", cube


def test_stage_reads_refuse_a_file_of_another_kind(run: dict[str, Path], tmp_path: Path) -> None:
    from onepixel.stages import run_stage

    cfg = {"device": "cpu", "locality": {"max_distance": 1, "random_positions": 2}}
    locality = run["locality"]
    inputs = {"checkpoint": run["checkpoint"], "test": run["dataset"], "attack": locality}
    message = _refusal(run_stage, "locality", inputs, {"out": tmp_path / "loc.nc"}, cfg)
    assert message == f"{locality}: is a onepixel-locality/2 file, expected onepixel-attack/2"
    assert not (tmp_path / "loc.nc").exists()
