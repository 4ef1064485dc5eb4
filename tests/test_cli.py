"""The `onepixel` command: user errors are one line on stderr with exit status 2."""

import json
import subprocess
import sys

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
    result = subprocess.run([sys.executable, "-m", "onepixel", "validate-config", "--config", str(config)],
                            capture_output=True, text=True)
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
