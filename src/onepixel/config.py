"""Configuration: load YAML, validate against the JSON Schema, fill defaults.

The schema (``config.schema.yaml``, shipped with the package and linked from
``workflow/schemas/``) is the single source of truth for keys, types, ranges
and defaults. Errors are one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from onepixel.cifar10_layout import cifar10_root_files
from onepixel.errors import ConfigError, DataError

SCHEMA_PATH = Path(str(resources.files("onepixel") / "config.schema.yaml"))


def load_schema() -> dict[str, Any]:
    """The configuration JSON Schema as a dict."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _with_defaults(validator_class: type) -> type:
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Mapping[str, Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(Draft202012Validator)


def _key(error: ValidationError) -> str:
    key = ""
    for part in error.absolute_path:
        key += f"[{part}]" if isinstance(part, int) else f".{part}"
    return key.lstrip(".") or "<config>"


def _allowed_keys(schema: Mapping[str, Any]) -> str:
    return ", ".join(sorted(schema.get("properties", {})))


def format_error(error: ValidationError) -> str:
    """One line: the key, the offending value and what is allowed."""
    key, value, rule = _key(error), error.instance, error.validator_value
    if error.validator == "additionalProperties":
        known = set(error.schema.get("properties", {}))
        unknown = sorted(set(value) - known) if isinstance(value, dict) else []
        where = f"{key}." if key != "<config>" else ""
        if known:
            return f"unknown key {where}{unknown[0] if unknown else '?'}; allowed keys: {_allowed_keys(error.schema)}"
    if error.validator == "enum":
        return f"{key}: {value!r} is not allowed; allowed values: {', '.join(map(str, rule))}"
    if error.validator == "type":
        return f"{key}: {value!r} has the wrong type; expected {rule}"
    limits = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if error.validator in limits:
        return f"{key}: {value!r} is out of range; must be {limits[error.validator]} {rule}"
    if error.validator == "minItems":
        return f"{key}: needs at least {rule} item(s)"
    if error.validator == "uniqueItems":
        return f"{key}: items must be unique; got {value!r}"
    if error.validator == "pattern":
        return f"{key}: {value!r} is not allowed; {error.schema.get('description', 'must match ' + rule)}"
    return f"{key}: {error.message}"


def validate_config(config: Mapping[str, Any] | None, check_files: bool = True) -> dict[str, Any]:
    """Validate ``config`` against the schema and return a copy with every default filled.

    Raises:
        ConfigError: one line naming the first offending key and what is allowed.
    """
    schema = load_schema()
    filled = _coerce_scalars(copy.deepcopy(dict(config or {})), schema)
    error = best_match(_DefaultFillingValidator(schema).iter_errors(filled))
    if error is not None:
        raise ConfigError(format_error(error))
    _check_semantics(filled, check_files)
    return filled


_SCALAR_TYPES = {"integer": int, "number": (int, float), "boolean": bool}


def _coerce_scalars(value: Any, schema: Mapping[str, Any]) -> Any:
    """Turn strings into the numbers/booleans the schema asks for.

    ``snakemake --config attack="{population: 50}"`` parses nested values with
    YAML's BaseLoader, which keeps every scalar a string; a string that reads as
    the expected type is converted, anything else is left for validation to report.
    """
    expected = _SCALAR_TYPES.get(schema.get("type", ""))
    if expected is not None and isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        is_bool = isinstance(parsed, bool)
        if isinstance(parsed, expected) and (is_bool == (schema["type"] == "boolean")):
            return parsed
        return value
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {k: _coerce_scalars(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_coerce_scalars(item, schema["items"]) for item in value]
    return value


def _check_semantics(config: dict[str, Any], check_files: bool) -> None:
    dataset = config["dataset"]
    if dataset["root"]:
        if dataset["name"] != "cifar10":
            raise ConfigError(
                f"dataset.root: a pre-staged copy is read for dataset.name cifar10 only, not {dataset['name']!r}"
            )
        if check_files and not Path(dataset["root"]).exists():
            where = "" if Path(dataset["root"]).is_absolute() else f" (relative to the working directory {Path.cwd()})"
            raise ConfigError(f"dataset.root: not found: {dataset['root']}{where}")
        if check_files:
            try:
                cifar10_root_files(dataset["root"])
            except DataError as exc:
                raise ConfigError(f"dataset.root: {exc}") from exc
    checkpoints: dict[str, str] = config["train"]["checkpoints"]
    for model, path in checkpoints.items():
        if model not in config["models"]:
            raise ConfigError(
                f"train.checkpoints.{model}: not in models; allowed: {', '.join(config['models'])}"
            )
        if check_files and not Path(path).is_file():
            raise ConfigError(f"train.checkpoints.{model}: file not found: {path}")


def load_config(path: str | os.PathLike[str], check_files: bool = True) -> dict[str, Any]:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return validate_config(raw, check_files=check_files)
