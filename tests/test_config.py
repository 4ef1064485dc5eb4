"""Config validation: defaults filled from the schema, one-line errors naming the key."""

from pathlib import Path

import pytest
import yaml

from onepixel.config import SCHEMA_PATH, load_config, load_schema, validate_config
from onepixel.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_empty_config_gets_every_default():
    config = validate_config({})
    assert config["dataset"] == {"name": "digits", "root": "", "test_fraction": 0.25, "seed": 0}
    assert config["models"] == ["lenet", "resnet20"]
    assert config["attack"]["population"] == 400
    assert config["attack"]["generations"] == 100
    assert config["attack"]["strategy"] == "rand1"
    assert config["locality"]["max_distance"] == 3


def test_partial_section_keeps_given_values_and_fills_the_rest():
    config = validate_config({"attack": {"population": 50}})
    assert config["attack"]["population"] == 50
    assert config["attack"]["generations"] == 100


def test_defaults_are_not_shared_between_calls():
    first = validate_config({})
    first["models"].append("vgg16")
    first["train"]["checkpoints"]["x"] = "y"
    second = validate_config({})
    assert second["models"] == ["lenet", "resnet20"]
    assert second["train"]["checkpoints"] == {}


def test_input_is_not_modified():
    raw = {"attack": {"population": 50}}
    validate_config(raw)
    assert raw == {"attack": {"population": 50}}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"models": ["lenet", "foo"]}, "models[1]: 'foo' is not allowed; allowed values: lenet, allconv"),
        ({"attack": {"population": 3}}, "attack.population: 3 is out of range; must be >= 4"),
        ({"attack": {"population": -5}}, "attack.population: -5 is out of range; must be >= 4"),
        ({"attack": {"generations": 0}}, "attack.generations: 0 is out of range; must be >= 1"),
        ({"attack": {"pixels": 0}}, "attack.pixels: 0 is out of range; must be >= 1"),
        ({"locality": {"max_distance": 0}}, "locality.max_distance: 0 is out of range; must be >= 1"),
        ({"attack": {"popsize": 10}}, "unknown key attack.popsize; allowed keys: F, batch_size"),
        ({"colour": 1}, "unknown key colour; allowed keys: attack, capture"),
        ({"dataset": {"name": "mnist"}}, "dataset.name: 'mnist' is not allowed; allowed values: digits, cifar10"),
        ({"train": {"epochs": "ten"}}, "train.epochs: 'ten' has the wrong type; expected integer"),
        ({"attack": {"strategy": "best2bin"}}, "attack.strategy: 'best2bin' is not allowed; allowed values: rand1, best1bin"),
        ({"models": []}, "models: needs at least 1 item(s)"),
        ({"device": "gpu"}, "device: 'gpu' is not allowed"),
    ],
)
def test_bad_values_give_one_line_naming_key_and_allowed(config, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_checkpoint_for_unlisted_model_or_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"train.checkpoints.vgg16: not in models"):
        validate_config({"train": {"checkpoints": {"vgg16": "x.pt"}}})
    with pytest.raises(ConfigError, match=r"train.checkpoints.lenet: file not found: .*missing.pt"):
        validate_config({"train": {"checkpoints": {"lenet": str(tmp_path / "missing.pt")}}})


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(listing)


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml"])
def test_shipped_configs_are_valid(name):
    load_config(REPO / "config" / name)


def test_default_config_file_spells_out_every_default():
    """config/config.yaml documents the defaults: it must equal the schema's defaults."""
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert validate_config(shipped) == validate_config({})
    assert set(shipped) == set(load_schema()["properties"])


def test_workflow_schema_is_the_package_schema():
    assert (REPO / "workflow" / "schemas" / "config.schema.yaml").resolve() == SCHEMA_PATH.resolve()


def test_strings_from_the_snakemake_command_line_are_converted():
    """`--config attack="{population: 50}"` reaches the workflow as strings (YAML BaseLoader)."""
    config = validate_config({"attack": {"population": "50", "F": "0.7", "targeted": "true"}})
    assert config["attack"]["population"] == 50
    assert config["attack"]["F"] == 0.7
    assert config["attack"]["targeted"] is True
    with pytest.raises(ConfigError, match="attack.population: 'many' has the wrong type; expected integer"):
        validate_config({"attack": {"population": "many"}})
    with pytest.raises(ConfigError, match="attack.population: 2 is out of range"):
        validate_config({"attack": {"population": "2"}})
    with pytest.raises(ConfigError, match="attack.targeted: '1' has the wrong type; expected boolean"):
        validate_config({"attack": {"targeted": "1"}})
