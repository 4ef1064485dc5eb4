"""Config validation: defaults filled from the schema, one-line errors naming the key."""

import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import _copy_workflow, _env
from onepixel.config import SCHEMA_PATH, load_config, load_schema, validate_config
from onepixel.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_empty_config_gets_every_default():
    config = validate_config({})
    assert config["dataset"] == {
        "name": "digits",
        "root": "",
        "test_fraction": 0.25,
        "seed": 0,
        **{"classes": "", "labels_file": "", "image_size": 0, "resize_size": 0, "max_images": 0, "bad_images": "error"},
    }
    assert config["model_sources"] == {}
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
        ({"attack": {"popsize": 10}}, "unknown key attack.popsize = 10; allowed keys: F, alpha, batch_size"),
        ({"colour": 1}, "unknown key colour = 1; allowed keys: attack, attacks, batch_memory_mb, capture"),
        ({"dataset": {"name": "mnist"}}, "dataset.name: 'mnist' is not allowed; allowed values: digits, cifar10"),
        ({"train": {"epochs": "ten"}}, "train.epochs: 'ten' has the wrong type; expected integer"),
        (
            {"attack": {"strategy": "best2bin"}},
            "attack.strategy: 'best2bin' is not allowed; allowed values: rand1, best1bin",
        ),
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


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"models": [3]}, "models[0]: 3 is not allowed; allowed: the registry's architectures"),
        ({"models": ["a b"]}, "models[0]: 'a b' is not allowed; a name of model_sources"),
        (
            {"models": ["m"], "model_sources": {"m": {"factory": "pkg.nets:build"}}},
            "model_sources.m.factory runs your code (pkg.nets:build): set model_sources.m.run_code: true to allow it",
        ),
        (
            {"models": ["m"], "model_sources": {"m": {"torchvision": "resnet18", "program": "m.pt2"}}},
            "model_sources.m: needs exactly one of torchvision, program, factory; got torchvision, program",
        ),
        ({"models": ["m"], "model_sources": {"m": {"kwargs": {}}}}, "model_sources.m: needs exactly one of"),
        ({"models": ["lenet"], "model_sources": {"x": {"torchvision": "vgg11"}}}, "model_sources.x: not in models"),
        (
            {"models": ["lenet"], "model_sources": {"lenet": {"torchvision": "vgg11"}}},
            "model_sources.lenet: 'lenet' is a registry architecture",
        ),
        (
            {"models": ["r"], "model_sources": {"r": {"torchvision": "resnet18", "weights": "A", "state_dict": "b"}}},
            "model_sources.r: give weights or state_dict, not both",
        ),
        (
            {"models": ["p"], "model_sources": {"p": {"program": "missing.pt2"}}},
            "model_sources.p.program: not found: missing.pt2",
        ),
        (
            {
                "models": ["r"],
                "model_sources": {"r": {"torchvision": "resnet18"}},
                "train": {"checkpoints": {"r": "x"}},
            },
            "train.checkpoints.r: r comes from model_sources",
        ),
        (
            {"models": ["resnet18", "torchvision:resnet18"]},
            "models[1]: 'torchvision:resnet18' names 'resnet18', which models or model_sources already use",
        ),
        ({"dataset": {"name": "imagefolder"}}, "dataset.root: required for dataset.name imagefolder"),
        (
            {"dataset": {"name": "imagenet-val", "root": "."}},
            "dataset.labels_file: required for dataset.name imagenet-val",
        ),
        ({"dataset": {"name": "imagefolder", "root": "no-such-folder"}}, "dataset.root: not found: no-such-folder"),
        (
            {"dataset": {"image_size": 224}},
            "dataset.image_size: used by dataset.name imagefolder and imagenet-val only",
        ),
        (
            {"dataset": {"name": "imagefolder", "root": "."}, "models": ["lenet"]},
            "models: lenet would be trained, but dataset.name imagefolder has no training split",
        ),
    ],
)
def test_model_sources_and_folder_datasets_are_checked_in_one_line(config, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_torchvision_shorthand_is_a_model_source():
    config = validate_config({"models": ["lenet", "torchvision:resnet18"], "dataset": {"name": "digits"}})
    assert config["models"] == ["lenet", "resnet18"]
    assert config["model_sources"] == {
        "resnet18": {"torchvision": "resnet18", "kwargs": {}, "run_code": False, "input_size": 0, "layers": []}
    }
    # what validation returns validates again to itself (the workflow validates the filled config once more)
    assert validate_config(config) == config


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
    with pytest.raises(ConfigError, match=r"bad.yaml:2:1: not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(listing)


@pytest.mark.parametrize("name", ["config.yaml", "test.yaml", "paper.yaml", "paper-targeted.yaml"])
def test_shipped_configs_are_valid(name):
    load_config(REPO / "config" / name)


def test_paper_configs_are_the_papers_setting():
    """CIFAR-10, the zoo of docs/science.md#reference-numbers in our registry, 1 pixel, population 400, 100 generations, >= 500 images;
    untargeted and targeted in two studies with their own results directories."""
    untargeted, targeted = (load_config(REPO / "config" / name) for name in ("paper.yaml", "paper-targeted.yaml"))
    for config in (untargeted, targeted):
        assert config["dataset"]["name"] == "cifar10"
        assert config["models"] == ["lenet", "allconv", "nin", "vgg16", "resnet32", "densenet", "wrn16_4"]
        assert (config["attack"]["pixels"], config["attack"]["population"], config["attack"]["generations"]) == (
            1,
            400,
            100,
        )
        assert config["attack"]["num_images"] >= 500 and config["attack"]["strategy"] == "rand1"
    assert (untargeted["attack"]["targeted"], targeted["attack"]["targeted"]) == (False, True)
    assert untargeted["study"] != targeted["study"]


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


# ---------------------------------------------------------------------------
# audit: every key of the schema is checked, with one line naming key, value and what is allowed
# ---------------------------------------------------------------------------
def _leaves(schema=None, prefix=""):
    """(dotted key, subschema) of every scalar/list key of the schema's sections."""
    schema = load_schema() if schema is None else schema
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}.{name}" if prefix else name
        if sub.get("type") == "object" and "properties" in sub:
            yield from _leaves(sub, key)
        else:
            yield key, sub


def _nest(key, value):
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _bad_cases():
    """(config, expected message) for every key: below its minimum, out of its enum, of the wrong type."""
    cases = []
    for key, sub in _leaves():
        kind = sub.get("type")
        if "minimum" in sub:
            low = sub["minimum"] - 1
            cases.append((key, low, f"{key}: {low!r} is out of range; must be >= {sub['minimum']}"))
        if "exclusiveMinimum" in sub:
            low = sub["exclusiveMinimum"]
            cases.append((key, low, f"{key}: {low!r} is out of range; must be > {sub['exclusiveMinimum']}"))
        if "maximum" in sub:
            high = sub["maximum"] + 1
            cases.append((key, high, f"{key}: {high!r} is out of range; must be <= {sub['maximum']}"))
        if "exclusiveMaximum" in sub:
            high = sub["exclusiveMaximum"]
            cases.append((key, high, f"{key}: {high!r} is out of range; must be < {sub['exclusiveMaximum']}"))
        if "enum" in sub:
            cases.append((key, "bogus", f"{key}: 'bogus' is not allowed; allowed values: {', '.join(sub['enum'])}"))
        if kind == "array" and "enum" in sub.get("items", {}):
            allowed = ", ".join(sub["items"]["enum"])
            required = [sub["contains"]["const"]] if "contains" in sub else []  # a valid item the list must hold
            cases.append(
                (
                    key,
                    [*required, "bogus"],
                    f"{key}[{len(required)}]: 'bogus' is not allowed; allowed values: {allowed}",
                )
            )
        wrong = {"integer": "many", "number": "lots", "boolean": "maybe", "string": 7, "array": 7, "object": 7}[kind]
        expected = {
            "integer": "integer",
            "number": "number",
            "boolean": "boolean (true or false)",
            "string": "string",
            "array": "list",
            "object": "mapping of keys",
        }[kind]
        cases.append((key, wrong, f"{key}: {wrong!r} has the wrong type; expected {expected}"))
    return cases


@pytest.mark.parametrize(("key", "value", "expected"), _bad_cases(), ids=lambda v: str(v)[:40])
def test_every_key_is_validated(key, value, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(_nest(key, value))
    assert str(info.value) == expected or str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("section", sorted(k for k, v in load_schema()["properties"].items() if "properties" in v))
def test_unknown_key_in_every_section(section):
    allowed = ", ".join(sorted(load_schema()["properties"][section]["properties"]))
    with pytest.raises(ConfigError) as info:
        validate_config({section: {"no_such_key": 1}})
    assert str(info.value) == f"unknown key {section}.no_such_key = 1; allowed keys: {allowed}"


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"attack": {"population": 3.0}}, "attack.population: 3 is out of range; must be >= 4"),
        ({"attack": {"population": 4.5}}, "attack.population: 4.5 has the wrong type; expected integer"),
        ({"attack": {"generations": 0}}, "attack.generations: 0 is out of range; must be >= 1"),
        ({"attack": {"pixels": 0}}, "attack.pixels: 0 is out of range; must be >= 1"),
        ({"attack": {"targeted": 1}}, "attack.targeted: 1 has the wrong type; expected boolean (true or false)"),
        ({"attack": {"F": True}}, "attack.F: True has the wrong type; expected number"),
        ({"train": {"lr": float("nan")}}, "train.lr: nan is not allowed; must be a finite number"),
        ({"train": {"lr": float("inf")}}, "train.lr: inf is not allowed; must be a finite number"),
        ({"attack": {"F": float("nan")}}, "attack.F: nan is not allowed; must be a finite number"),
        ({"dataset": {"test_fraction": ".nan"}}, "dataset.test_fraction: nan is not allowed; must be a finite number"),
        ({"models": "lenet"}, "models: 'lenet' has the wrong type; expected list"),
        ({"models": ["lenet", "lenet"]}, "models: items must be unique; got ['lenet', 'lenet']"),
        ({"figures": {"formats": []}}, "figures.formats: needs at least 1 item(s); got []"),
        ({"figures": {"formats": ["pdf"]}}, "figures.formats: ['pdf'] must include 'png'"),
        ({"train": {"checkpoints": {"lenet": ""}}}, "train.checkpoints.lenet: '' is too short"),
        ({"train": {"checkpoints": {"lenet": 3}}}, "train.checkpoints.lenet: 3 has the wrong type; expected string"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name: 'imagenet' is not allowed; allowed values: digits, cifar10"),
        ({"attack": "fast"}, "attack: 'fast' has the wrong type; expected mapping of keys"),
    ],
    ids=lambda v: str(v)[:50],
)
def test_more_bad_values(config, expected):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_integral_floats_become_integers():
    """JSON Schema accepts 50.0 as an integer; the engine would not: it is converted before any job starts."""
    config = validate_config({"attack": {"population": 50.0, "num_images": "12"}, "threads": 2.0})
    assert config["attack"]["population"] == 50 and type(config["attack"]["population"]) is int
    assert config["attack"]["num_images"] == 12 and type(config["threads"]) is int


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"^<config>: the top level must be a mapping of keys, got list$"):
        validate_config([1, 2])


def test_schema_enums_match_the_registries():
    """The schema's names are the code's names: a model or data set the code has is allowed, no other."""
    from onepixel.data import DATASET_NAMES
    from onepixel.models import MODEL_NAMES

    props = load_schema()["properties"]
    assert props["models"]["items"]["anyOf"][0]["enum"] == list(MODEL_NAMES)
    assert props["dataset"]["properties"]["name"]["enum"] == list(DATASET_NAMES)


def test_validate_section_and_defaults():
    from onepixel.attack.stage import DEFAULT_ATTACK_CONFIG
    from onepixel.config import section_defaults, validate_section

    schema_defaults = {k: v["default"] for k, v in load_schema()["properties"]["attack"]["properties"].items()}
    assert section_defaults("attack") == schema_defaults == DEFAULT_ATTACK_CONFIG
    assert validate_section("attack", {"population": "8"})["population"] == 8
    with pytest.raises(ConfigError, match=r"^attack.population: 3 is out of range; must be >= 4$"):
        validate_section("attack", {"population": 3})
    with pytest.raises(ConfigError, match=r"^unknown key attack.popsize = 3; allowed keys: F, alpha, batch_size"):
        validate_section("attack", {"popsize": 3})
    with pytest.raises(ConfigError, match=r"^attack.F: nan is not allowed"):
        validate_section("attack", {"F": float("nan")})
    with pytest.raises(ConfigError, match=r"^attackz: not a section of the config; sections: attack, attacks, capture"):
        validate_section("attackz", {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("attack:\n  population: 2\n", "error: attack.population: 2 is out of range; must be >= 4\n"),
        ("attack:\n  popsize: 10\n", "error: unknown key attack.popsize = 10; allowed keys: F, alpha, batch_size"),
        ("models: [lenet, alexnet]\n", "error: models[1]: 'alexnet' is not allowed; allowed values: lenet"),
        ("locality:\n  max_distance: 0\n", "error: locality.max_distance: 0 is out of range; must be >= 1\n"),
        ("train:\n  lr: .nan\n", "error: train.lr: nan is not allowed; must be a finite number\n"),
        ("attack: [1, 2\n", "error: "),
    ],
    ids=["range", "unknown", "model", "distance", "nan", "yaml"],
)
def test_cli_reports_config_errors_in_one_line(tmp_path, capsys, text, expected):
    from onepixel.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["validate-config", "--config", str(config)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""


# ===========================================================================
# config errors stop `snakemake` before any job, in one line
# ===========================================================================
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return _copy_workflow(tmp_path_factory.mktemp("wf"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["attack={popsize: 10}"], "error: unknown key attack.popsize = '10'; allowed keys: F, alpha, batch_size"),
        (["train={lr: .nan}"], "error: train.lr: nan is not allowed; must be a finite number"),
        (["dataset={name: mnist}"], "error: dataset.name: 'mnist' is not allowed; allowed values: digits, cifar10"),
        (["locality={max_distance: 0}"], "error: locality.max_distance: 0 is out of range; must be >= 1"),
    ],
    ids=["unknown-key", "nan", "dataset", "distance"],
)
@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_snakemake_stops_on_a_bad_config_before_any_job(workdir, override, expected):
    result = subprocess.run(
        ["snakemake", "-n", "--config", *override], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_a_yaml_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack:\n  population: 50\n   generations: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == f"{bad}:3:15: not valid YAML: mapping values are not allowed here"
    bad.write_text("models: [lenet, allconv\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == (
        f"{bad}:2:1: not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence started at line 1, column 9)"
    )


def test_a_config_file_that_is_a_folder_or_not_text_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=rf"^config file {tmp_path}: is a folder, not a YAML file$"):
        load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"c.yaml: not a UTF-8 text file \(byte 0 is 0xff\)$"):
        load_config(binary)
