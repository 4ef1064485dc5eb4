"""The `onepixel` command: user errors are one line on stderr with exit status 2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from helpers import _bad_checkpoint
from onepixel.cli import main


def test_validate_config_prints_defaults(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("attack:\n  population: 50\n")
    assert main(["validate-config", "--config", str(config)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["attack"]["population"] == 50
    assert printed["attack"]["generations"] == 100


def test_bad_config_is_one_line_and_status_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("attack:\n  population: 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "onepixel", "validate-config", "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr == "error: attack.population: 2 is out of range; must be >= 4\n"


def test_missing_input_file_is_named(tmp_path, capsys):
    status = main(["propagation", "--cubes", str(tmp_path / "nowhere"), "--out", str(tmp_path / "pm.nc")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and err.count("\n") == 1


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lenet", "allconv", "nin", "vgg16", "resnet20", "densenet", "wrn16_4"):
        assert name in out


def test_the_cli_names_a_corrupt_checkpoint_in_one_line(tmp_path, toy, capsys):
    path, _ = _bad_checkpoint("truncated", tmp_path)
    status = main(
        ["attack", "--checkpoint", str(path), "--test", str(toy / "test.nc"), "--out", str(tmp_path / "a.nc")]
    )
    err = capsys.readouterr().err
    assert status == 2 and err.startswith(f"error: {path}: not a readable PyTorch checkpoint") and err.count("\n") == 1
    assert not (tmp_path / "a.nc").exists()


def test_ctrl_c_in_the_cli_is_one_line(monkeypatch, capsys):
    import onepixel.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(onepixel.cli, "_cmd_validate", interrupted)
    assert main(["validate-config"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("error: interrupted") and err.count("\n") == 1


def test_every_stage_has_a_generated_command_whose_help_lists_its_files_and_keys(capsys):
    from onepixel.stages import STAGES

    for stage in STAGES.values():
        with pytest.raises(SystemExit) as done:
            main([stage.command, "--help"])
        assert done.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        for port in (*stage.inputs, *stage.outputs):
            assert port.option in text, (stage.name, port.name)
        for key in stage.reads:
            assert key in text, (stage.name, key)
        if stage.seed:
            assert f"seed recorded: {stage.seed}" in text


def test_set_overrides_the_config_and_is_validated(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("attack:\n  population: 50\n")
    assert (
        main(
            [
                "validate-config",
                "--config",
                str(config),
                "--set",
                "attack.generations=7",
                "--set",
                "locality.rings=euclidean",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert (printed["attack"]["population"], printed["attack"]["generations"]) == (50, 7)
    assert printed["locality"]["rings"] == "euclidean"
    assert main(["validate-config", "--set", "attack.generations=0"]) == 2
    assert capsys.readouterr().err == "error: attack.generations: 0 is out of range; must be >= 1\n"
    assert main(["validate-config", "--set", "population"]) == 2
    assert capsys.readouterr().err.startswith("error: --set: expected KEY=VALUE")


@pytest.mark.slow
def test_the_generated_cli_gives_the_workflows_results(study, tmp_path, capsys):
    """Every stage run from the command line, with the smoke-test study's config, writes the same data as the
    workflow's one script (tests/conftest.py's `dvc repro` of that study)."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study.config))
    # the workflow's jobs run with `threads` torch threads (capped at the cores): the same float rounding here
    torch.set_num_threads(min(study.config["threads"], os.cpu_count() or 1))
    out, data, results = tmp_path / "cli", tmp_path / "cli" / "data", study.results

    def cli(*args: object) -> None:
        assert main([*map(str, args), "--config", str(config)]) == 0, args

    cli("prepare-data", "--train", data / "train.nc", "--test", data / "test.nc")
    models = study.config["models"]
    for model in models:
        files = ["--checkpoint", out / f"{model}.pt", "--test", data / "test.nc"]
        cli(
            "train",
            "--model",
            model,
            "--train",
            data / "train.nc",
            "--test",
            data / "test.nc",
            "--checkpoint",
            out / f"{model}.pt",
            "--metrics",
            out / f"{model}-metrics.json",
        )
        cli("select-images", *files, "--out", out / f"{model}-selection.json")
        cli("attack", *files, "--selection", out / f"{model}-selection.json", "--out", out / f"{model}-shard.nc")
        cli(
            "merge-attack",
            "--shards",
            out / f"{model}-shard.nc",
            "--selection",
            out / f"{model}-selection.json",
            "--out",
            out / f"{model}-attack.nc",
        )
        attacked = [*files, "--attack", out / f"{model}-attack.nc"]
        cli("capture", *attacked, "--out", out / f"{model}-cubes")
        cli("propagation", "--cubes", out / f"{model}-cubes", "--out", out / f"{model}-pm.nc")
        cli("locality", *attacked, "--out", out / f"{model}-locality.nc")
        cli("vulnerability", *attacked, "--out", out / f"{model}-vulnerability.nc")
        for kind, theirs in (
            ("attack", "attack"),
            ("pm", "propagation"),
            ("locality", "locality"),
            ("vulnerability", "vulnerability"),
        ):
            mine = xr.load_dataset(out / f"{model}-{kind}.nc")
            workflow = xr.load_dataset(results / theirs / f"{model}.nc")
            assert set(mine.data_vars) == set(workflow.data_vars), (model, kind)
            for name in mine.variables:
                np.testing.assert_array_equal(
                    mine[name].values, workflow[name].values, err_msg=f"{model} {kind} {name}"
                )
    # a further attack of config `attacks` is the attack stage with that attack's keys set
    pgd = ["--set", "attack.method=pgd", "--set", "attack.steps=5"]
    for model in models:
        files = ["--checkpoint", out / f"{model}.pt", "--test", data / "test.nc"]
        cli("attack", *files, "--selection", out / f"{model}-selection.json", "--out", out / f"{model}-pgd.nc", *pgd)
        cli("capture", *files, "--attack", out / f"{model}-pgd.nc", "--out", out / f"{model}-pgd-cubes")
        cli("propagation", "--cubes", out / f"{model}-pgd-cubes", "--out", out / f"{model}-pgd-pm.nc")
        for kind, theirs in (("pgd", "attack"), ("pgd-pm", "propagation")):
            mine, workflow = (
                xr.load_dataset(path) for path in (out / f"{model}-{kind}.nc", results / theirs / "pgd" / f"{model}.nc")
            )
            for name in mine.variables:
                np.testing.assert_array_equal(
                    mine[name].values, workflow[name].values, err_msg=f"{model} {kind} {name}"
                )
    runs = {"main": ("attack.nc", "pm.nc"), "pgd": ("pgd.nc", "pgd-pm.nc")}
    cli(
        "comparison",
        "--attack",
        *[f"{name}/{m}={out / f'{m}-{files[0]}'}" for name, files in runs.items() for m in models],
        "--propagation",
        *[f"{name}/{m}={out / f'{m}-{files[1]}'}" for name, files in runs.items() for m in models],
        "--test",
        data / "test.nc",
        "--out",
        out / "comparison.json",
        "--table",
        out / "comparison.html",
        "--csv",
        out / "pm_statistics.csv",
        "--figures",
        out / "comparison",
    )
    compared = json.loads((out / "comparison.json").read_text())
    workflow_compared = json.loads((results / "plots" / "comparison.json").read_text())
    assert list(compared["attacks"]) == ["main", "pgd"]
    for model in models:
        for name in runs:
            assert compared["models"][model]["attacks"][name] == workflow_compared["models"][model]["attacks"][name]
    bad = ["comparison", "--attack", "lenet=x.nc", "--propagation", "main/lenet=y.nc", "--out", "c.json"]
    capsys.readouterr()  # what the stages above logged
    assert main([*bad, "--table", "c.html", "--csv", "c.csv", "--figures", "f"]) == 2
    assert capsys.readouterr().err.endswith("error: --attack: expected ATTACK/MODEL=PATH, got lenet=x.nc\n")
    pairs = {
        kind: [f"{m}={out / f'{m}-{suffix}'}" for m in models]
        for kind, suffix in (
            ("attack", "attack.nc"),
            ("propagation", "pm.nc"),
            ("locality", "locality.nc"),
            ("vulnerability", "vulnerability.nc"),
            ("metrics", "metrics.json"),
        )
    }
    cli(
        "figures",
        "--test",
        data / "test.nc",
        "--attack",
        *pairs["attack"],
        "--propagation",
        *pairs["propagation"],
        "--locality",
        *pairs["locality"],
        "--out",
        out / "figures",
    )
    cli(
        "locality-figures",
        "--test",
        data / "test.nc",
        "--locality",
        *pairs["locality"],
        "--vulnerability",
        *pairs["vulnerability"],
        "--out",
        out / "figures",
    )
    cli(
        "summary",
        "--metrics",
        *pairs["metrics"],
        "--attack",
        *pairs["attack"],
        "--propagation",
        *pairs["propagation"],
        "--locality",
        *pairs["locality"],
        "--summary",
        out / "summary.json",
        "--provenance",
        out / "provenance.json",
        "--models-csv",
        out / "models.csv",
        "--locality-csv",
        out / "locality.csv",
        "--table",
        out / "metrics.html",
        "--comparison",
        out / "comparison.json",
    )
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == sorted(
        p.name for p in (results / "figures").glob("*.png")
    )
    mine, theirs = json.loads((out / "summary.json").read_text()), json.loads((results / "summary.json").read_text())
    assert mine["models"].keys() == theirs["models"].keys()
    for model in models:
        for key, value in theirs["models"][model].items():
            if key not in ("wall_time_s", "candidates_per_s"):
                assert mine["models"][model][key] == value, (model, key)
        assert "ground_truth" not in mine  # no sweep among the two attacks compared here
        for name in runs:
            assert mine["attacks"][model][name] == theirs["attacks"][model][name]
