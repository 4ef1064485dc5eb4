"""Configuration: load YAML, validate against the JSON Schema, fill defaults.

The schema (``config.schema.yaml``, shipped with the package and linked from
``workflow/schemas/``) is the single source of truth for keys, types, ranges
and defaults. Errors are one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from onepixel.data.cifar10_layout import cifar10_root_files
from onepixel.errors import ConfigError, DataError

SCHEMA_PATH = Path(str(resources.files("onepixel") / "config.schema.yaml"))


def load_schema() -> dict[str, Any]:
    """The configuration JSON Schema as a dict."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(validator_class: type[Any]) -> type[Any]:
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(
        validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any
    ) -> Iterator[ValidationError]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(Draft202012Validator)


def _key(error: ValidationError, root: str = "") -> str:
    key = root
    for part in error.absolute_path:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key.lstrip(".") or "<config>"


def _allowed_keys(schema: Mapping[str, Any]) -> str:
    return ", ".join(sorted(schema.get("properties", {})))


#: JSON Schema type names as a YAML user reads them
_TYPE_WORDS = {
    "integer": "integer",
    "number": "number",
    "boolean": "boolean (true or false)",
    "string": "string",
    "array": "list",
    "object": "mapping of keys",
}


def format_error(error: ValidationError, root: str = "") -> str:
    """One line: the key, the offending value and what is allowed.

    ``root`` is the section the validated instance sits at (e.g. ``"attack"`` when
    only that section was validated), so keys are named as in the config file.
    """
    key, value, rule = _key(error, root), error.instance, error.validator_value
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(set(value) - known) if isinstance(value, dict) else []
        where = f"{key}." if key != "<config>" else ""
        if known:
            name = unknown[0] if unknown else "?"
            given = f" = {value[name]!r}" if unknown else ""
            return f"unknown key {where}{name}{given}; allowed keys: {_allowed_keys(error.schema)}"
    if error.validator == "anyOf":
        choices = [option.get("description", "") for option in rule if isinstance(option, Mapping)]
        return f"{key}: {value!r} is not allowed; allowed: {'; or '.join(filter(None, choices))}"
    if error.validator == "enum":
        return f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(str, rule))}"
    if error.validator == "type":
        expected = " or ".join(_TYPE_WORDS.get(t, t) for t in ([rule] if isinstance(rule, str) else rule))
        return f"{key}: {value!r} has the wrong type; expected {expected}"
    limits = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if error.validator in limits:
        return f"{key}: {value!r} is out of range; must be {limits[error.validator]} {rule}"
    if error.validator == "minItems":
        return f"{key}: needs at least {rule} item(s); got {value!r}"
    if error.validator == "uniqueItems":
        return f"{key}: items must be unique; got {value!r}"
    if error.validator == "minLength":
        return f"{key}: {value!r} is too short; must have at least {rule} character(s)"
    if error.validator == "contains":
        return f"{key}: {value!r} must include {error.validator_value.get('const', error.validator_value)!r}"
    if error.validator == "pattern":
        return f"{key}: {value!r} is not allowed; {error.schema.get('description', 'must match ' + rule)}"
    return f"{key}: {' '.join(error.message.split())}"


def validate_config(config: Mapping[str, Any] | None, check_files: bool = True) -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with every default filled.

    Strings that read as the number or boolean a key expects are converted
    (``snakemake --config`` passes nested values as strings), as are floats with
    an integral value where an integer is expected (``population: 50.0``).
    NaN and infinite numbers are refused everywhere.

    Raises:
        ConfigError: one line naming the first offending key, its value and what is allowed.
    """
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(f"<config>: the top level must be a mapping of keys, got {type(config).__name__}")
    filled = _validated(load_schema(), config, "")
    _check_semantics(filled, check_files)
    return filled


def validate_section(section: str, values: Mapping[str, Any] | None, arguments: bool = False) -> dict[str, Any]:
    """Validate one section of the config (e.g. ``"attack"``) on its own; return it with its defaults filled.

    The same rules and one-line messages as :func:`validate_config` (keys are named
    ``section.key``), for library callers that pass one section. With ``arguments``
    the values are a function's keyword arguments: named without the section, and
    strings are not read as numbers or booleans.

    Raises:
        ConfigError: unknown section, or an offending key of it.
    """
    properties = load_schema()["properties"]
    if section not in properties or properties[section].get("type") != "object":
        sections = sorted(k for k, v in properties.items() if v.get("type") == "object")
        raise ConfigError(f"{section}: not a section of the config; sections: {', '.join(sections)}")
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError(f"{section}: {values!r} has the wrong type; expected mapping of keys")
    return _validated(properties[section], values, "" if arguments else section, coerce=not arguments)


def section_defaults(section: str) -> dict[str, Any]:
    """The schema's default of every key of ``section`` (e.g. ``"attack"``), a fresh copy."""
    return validate_section(section, {})


def _validated(
    schema: Mapping[str, Any], values: Mapping[str, Any] | None, root: str, coerce: bool = True
) -> dict[str, Any]:
    filled = copy.deepcopy(dict(values or {}))
    if coerce:
        filled = _coerce_scalars(filled, schema)
    error = best_match(_DefaultFillingValidator(schema).iter_errors(filled))
    if error is not None:
        raise ConfigError(format_error(error, root))
    _check_finite(filled, root)
    return filled


def _check_finite(value: Any, key: str) -> None:
    """JSON Schema lets NaN pass every range check (every comparison with NaN is false): refuse it, and infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key or '<config>'}: {value!r} is not allowed; must be a finite number")
    if isinstance(value, dict):
        for name, item in value.items():
            _check_finite(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_finite(item, f"{key}[{i}]")


_SCALAR_TYPES: dict[str, type | tuple[type, ...]] = {"integer": int, "number": (int, float), "boolean": bool}


def _coerce_scalars(value: Any, schema: Mapping[str, Any]) -> Any:
    """Turn strings into the numbers/booleans the schema asks for, and integral floats into integers.

    ``snakemake --config attack="{population: 50}"`` parses nested values with
    YAML's BaseLoader, which keeps every scalar a string; a string that reads as
    the expected type is converted, anything else is left for validation to report.
    ``50.0`` where an integer is expected becomes ``50`` (JSON Schema accepts it as an
    integer, the code downstream would not).
    """
    expected = _SCALAR_TYPES.get(schema.get("type", ""))
    if schema.get("type") == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if expected is not None and isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        is_bool = isinstance(parsed, bool)
        if isinstance(parsed, expected) and (is_bool == (schema["type"] == "boolean")):
            return _coerce_scalars(parsed, schema)  # "50.0" -> 50.0 -> 50 for an integer
        return value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: _coerce_scalars(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce_scalars(item, schema["items"]) for item in value]
    return value


#: data sets read from a folder of image files (dataset.root): test images only, no training split
FOLDER_DATASETS = ("imagefolder", "imagenet-val")
#: the keys of a model_sources entry that say where the model comes from (exactly one)
SOURCE_KINDS = ("torchvision", "program", "factory")


def registry_names() -> list[str]:
    """The model registry's architectures, as the schema lists them (onepixel.models.MODEL_NAMES, without torch)."""
    return list(load_schema()["properties"]["models"]["items"]["anyOf"][0]["enum"])


def runs_user_code(config: Mapping[str, Any]) -> bool:
    """Whether the study builds a model with the user's factory, as its config allows (``model_sources.*.run_code``).

    Its stages may then load checkpoints of such models (they check that each checkpoint is the study's own).
    """
    sources = config.get("model_sources", {}).values()
    return any(source.get("factory") and source.get("run_code") for source in sources)


#: attack methods that change pixels (locality and the vulnerability maps move a pixel's colour)
PIXEL_METHODS = ("de", "exhaustive")
#: the name of the config's ``attack`` section among the study's attacks (the others are ``attacks``' keys)
MAIN_ATTACK = "main"
#: keys of ``attack`` that every attack of a study shares: they choose the images (and the shard jobs)
SHARED_ATTACK_KEYS = ("num_images", "labels", "targeted", "seed", "shards")


def attack_names(config: Mapping[str, Any]) -> list[str]:
    """The study's attacks: ``main`` (the ``attack`` section), then the names of ``attacks`` in config order."""
    return [MAIN_ATTACK, *config.get("attacks", {})]


def with_attack(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The config whose ``attack`` section is attack ``name`` of the study (``main``: the config itself).

    Raises:
        ConfigError: ``name`` is not one of :func:`attack_names`, or the merged section is not valid.
    """
    if name == MAIN_ATTACK:
        return dict(config)
    attacks = config.get("attacks", {})
    if name not in attacks:
        raise ConfigError(f"attacks.{name}: no such attack; the study's attacks: {', '.join(attack_names(config))}")
    return {**config, "attack": _attack_section(config, name)}


def _attack_section(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    overrides = config["attacks"][name]
    shared = [key for key in SHARED_ATTACK_KEYS if key in overrides]
    if shared:
        raise ConfigError(
            f"attacks.{name}.{shared[0]}: every attack of a study uses the attack section's "
            f"{', '.join(SHARED_ATTACK_KEYS)} (the same images); set it there"
        )
    try:
        return validate_section("attack", {**config["attack"], **overrides})
    except ConfigError as exc:  # the key of the attacks entry, not of the attack section
        message = str(exc)
        at = 0 if message.startswith("attack.") else message.find(" attack.") + 1
        raise ConfigError(message[:at] + f"attacks.{name}." + message[at + len("attack.") :]) from exc


def _check_attacks(config: dict[str, Any]) -> None:
    for name in config["attacks"]:
        if name == MAIN_ATTACK or name in config["models"]:
            what = "the attack section's name" if name == MAIN_ATTACK else "a model's name"
            raise ConfigError(f"attacks.{name}: {name!r} is {what}; give the attack another name")
        _attack_section(config, name)


def _check_semantics(config: dict[str, Any], check_files: bool) -> None:
    _check_dataset(config["dataset"], check_files)
    _expand_torchvision_shorthands(config)
    _check_models(config, check_files)
    _check_attacks(config)
    checkpoints: dict[str, str] = config["train"]["checkpoints"]
    for model, path in checkpoints.items():
        if model not in config["models"]:
            raise ConfigError(f"train.checkpoints.{model}: not in models; allowed: {', '.join(config['models'])}")
        if model in config["model_sources"]:
            raise ConfigError(
                f"train.checkpoints.{model}: {model} comes from model_sources; give its weights there "
                f"(model_sources.{model}.state_dict or .weights)"
            )
        if check_files and not Path(path).is_file():
            raise ConfigError(f"train.checkpoints.{model}: file not found: {path}")
    if config["dataset"]["name"] in FOLDER_DATASETS:
        untrained = [m for m in config["models"] if m not in config["model_sources"] and m not in checkpoints]
        if untrained:
            raise ConfigError(
                f"models: {untrained[0]} would be trained, but dataset.name {config['dataset']['name']} has no "
                f"training split; give train.checkpoints.{untrained[0]} or a model_sources entry with its weights"
            )


def _check_exists(key: str, path: str, check_files: bool, folder: bool = False) -> None:
    if not check_files or (Path(path).is_dir() if folder else Path(path).exists()):
        return
    where = "" if Path(path).is_absolute() else f" (relative to the working directory {Path.cwd()})"
    raise ConfigError(f"{key}: not found: {path}{where}")


def _check_dataset(dataset: dict[str, Any], check_files: bool) -> None:
    name = dataset["name"]
    if name in FOLDER_DATASETS:
        if not dataset["root"]:
            raise ConfigError(f"dataset.root: required for dataset.name {name} (the folder of its images)")
        _check_exists("dataset.root", dataset["root"], check_files, folder=True)
        if name == "imagenet-val" and not dataset["labels_file"]:
            raise ConfigError("dataset.labels_file: required for dataset.name imagenet-val (each image's class)")
        for key in ("classes", "labels_file"):
            if dataset[key]:
                _check_exists(f"dataset.{key}", dataset[key], check_files)
        return
    for key in ("classes", "labels_file", "image_size", "resize_size", "max_images"):
        if dataset[key]:
            raise ConfigError(f"dataset.{key}: used by dataset.name {' and '.join(FOLDER_DATASETS)} only, not {name!r}")
    if dataset["root"]:
        if name != "cifar10":
            raise ConfigError(
                f"dataset.root: a pre-staged copy is read for dataset.name cifar10 only, not {name!r} "
                f"(and the folder of images for {' and '.join(FOLDER_DATASETS)})"
            )
        _check_exists("dataset.root", dataset["root"], check_files)
        if check_files:
            try:
                cifar10_root_files(dataset["root"])
            except DataError as exc:
                raise ConfigError(f"dataset.root: {exc}") from exc


def _expand_torchvision_shorthands(config: dict[str, Any]) -> None:
    """``models: [torchvision:resnet18]`` -> ``models: [resnet18]`` and ``model_sources.resnet18: {torchvision: resnet18}``."""
    sources: dict[str, Any] = config["model_sources"]
    for index, entry in enumerate(config["models"]):
        if not entry.startswith("torchvision:"):
            continue
        name = entry.split(":", 1)[1]
        if name in config["models"] or (name in sources and sources[name].get("torchvision") != name):
            raise ConfigError(f"models[{index}]: {entry!r} names {name!r}, which models or model_sources already use")
        config["models"][index] = name
        sources.setdefault(name, {"torchvision": name})
        for key, value in (("kwargs", {}), ("run_code", False), ("input_size", 0), ("layers", [])):
            sources[name].setdefault(key, value)


def _check_models(config: dict[str, Any], check_files: bool) -> None:
    registry, sources = registry_names(), config["model_sources"]
    for index, model in enumerate(config["models"]):
        if model not in registry and model not in sources:
            raise ConfigError(
                f"models[{index}]: {model!r} is not allowed; allowed values: {', '.join(registry)}, "
                "a name given in model_sources, or torchvision:<name>"
            )
    for name, source in sources.items():
        key = f"model_sources.{name}"
        if name in registry:
            raise ConfigError(f"{key}: {name!r} is a registry architecture; give the model another name")
        if name not in config["models"]:
            raise ConfigError(f"{key}: not in models; add {name} to models or remove the entry")
        kinds = [kind for kind in SOURCE_KINDS if kind in source]
        if len(kinds) != 1:
            raise ConfigError(
                f"{key}: needs exactly one of {', '.join(SOURCE_KINDS)}; got {', '.join(kinds) or 'none'}"
            )
        if "weights" in source and "state_dict" in source:
            raise ConfigError(f"{key}: give weights or state_dict, not both")
        if "weights" in source and kinds[0] != "torchvision":
            raise ConfigError(f"{key}.weights: torchvision weights names are for torchvision models; use state_dict")
        if kinds[0] == "factory" and not source["run_code"]:
            raise ConfigError(
                f"{key}.factory runs your code ({source['factory']}): set {key}.run_code: true to allow it"
            )
        if kinds[0] == "program":
            _check_exists(f"{key}.program", source["program"], check_files)
        if "state_dict" in source:
            _check_exists(f"{key}.state_dict", source["state_dict"], check_files)
        if "mean" in source and "std" in source and len(source["mean"]) != len(source["std"]):
            raise ConfigError(
                f"{key}: mean and std need one value per channel each; got {source['mean']} and {source['std']}"
            )


def load_config(path: str | os.PathLike[str], check_files: bool = True) -> dict[str, Any]:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    return validate_config(read_config_file(path), check_files=check_files)


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping a YAML config file holds, not validated (``{}`` for an empty file).

    Raises:
        ConfigError: one line naming the file: not found, a folder, unreadable, not
            UTF-8, not valid YAML (``FILE:LINE:COLUMN``, 1-based, see :func:`yaml_error_line`),
            or not a mapping of keys at the top level.
    """
    file = Path(path)
    if not file.exists():
        where = "" if file.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ConfigError(f"config file not found: {file}{where}")
    if file.is_dir():
        raise ConfigError(f"config file {file}: is a folder, not a YAML file")
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {file}: cannot be read ({(exc.strerror or str(exc)).lower()})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {file}: not a UTF-8 text file (byte {exc.start} is {exc.object[exc.start]:#x})"
        ) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_line(file, exc)) from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw or {}


def yaml_error_line(file: str | os.PathLike[str], exc: yaml.YAMLError) -> str:
    """``FILE:LINE:COLUMN: not valid YAML: <problem>`` (1-based, from the error's ``problem_mark``)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(file)
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    opened = getattr(exc, "context_mark", None)
    if context and opened is not None and mark is not None and (opened.line, opened.column) != (mark.line, mark.column):
        context += f" started at line {opened.line + 1}, column {opened.column + 1}"
    detail = (f"{problem} ({context})" if context else problem) if problem else str(exc)
    return f"{where}: not valid YAML: {' '.join(str(detail).split())}"
