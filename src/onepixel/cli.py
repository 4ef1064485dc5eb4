"""Command-line interface: one sub-command per stage of the study, generated from the stage registry.

``onepixel <stage> --<input> PATH ... --out PATH [--config FILE] [--set key=value ...]``
runs a stage of :data:`onepixel.stages.STAGES` exactly as the workflow does: the
settings come from ``--config`` (validated, defaults filled; without it the
defaults apply) and ``--set`` (dotted keys, YAML values), the files from the
options. User errors print one line ``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from onepixel.config import load_config, load_schema, validate_config
from onepixel.errors import ConfigError, OnePixelError
from onepixel.jobs import Interrupted, configure_logging, interrupts_as_one_line, user_error_line
from onepixel.stages import STAGES, Port, Stage, run_stage


def _raw_config(args: argparse.Namespace, check_files: bool = True) -> dict[str, Any]:
    """The config of ``--config`` (or none) with every ``--set key=value`` applied, not yet validated."""
    cfg: dict[str, Any] = dict(load_config(args.config, check_files=check_files)) if args.config else {}
    for item in getattr(args, "set", None) or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set: expected KEY=VALUE with a dotted key such as attack.population=50, got {item!r}")
        *sections, last = key.split(".")
        node = cfg
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a section of the config")
        node[last] = yaml.safe_load(text) if text else ""
    return cfg


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return validate_config(_raw_config(args))


def _cmd_validate(args: argparse.Namespace) -> None:
    print(json.dumps(_config(args), indent=2, sort_keys=True))


def _cmd_models(args: argparse.Namespace) -> None:
    from onepixel.models import MODEL_NAMES, build_model, count_parameters

    for name in MODEL_NAMES:
        params = count_parameters(build_model(name, num_classes=10, in_channels=3, image_size=32))
        print(f"{name:10s} {params:>10,d} parameters (32x32x3, 10 classes)")


def _cmd_receptive_fields(args: argparse.Namespace) -> None:
    from onepixel.analysis.receptive_field import theoretical_receptive_fields
    from onepixel.models import build_model, load_checkpoint

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        channels, size = (
            meta["build_kwargs"].get("in_channels", 3),
            args.size or meta["build_kwargs"].get("image_size", 32),
        )
    else:
        channels, size = args.channels, args.size or 32
        model = build_model(args.model, in_channels=channels, image_size=size)
    fields = theoretical_receptive_fields(model, (channels, size, size), args.layers or None)
    print(f"{'layer':24s} {'size':>6s} {'stride':>6s} {'start':>6s}   ({channels}x{size}x{size} input; size unclipped)")
    for layer, rf in fields.items():
        print(f"{layer:24s} {rf.size:6d} {rf.stride:6d} {rf.start:6g}")


def _cmd_layers(args: argparse.Namespace) -> None:
    from onepixel.models.layers import layer_lines

    lines = layer_lines(
        args.model,
        size=args.size,
        classes=args.classes,
        channels=args.channels,
        everything=args.all,
        run_code=args.run_code,
    )
    print("\n".join(lines))


def _cmd_estimate(args: argparse.Namespace) -> None:
    from onepixel.estimate import check_positive, estimate_lines, estimate_study

    tflops, ratio = check_positive(args.tflops, "--tflops"), check_positive(args.ratio, "--ratio")
    cfg = validate_config(_raw_config(args, check_files=False), check_files=False)  # before the data are there
    print("\n".join(estimate_lines(cfg, estimate_study(cfg, tflops, ratio), tflops, ratio)))


def _pairs(items: Sequence[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep or not model or not path:
            raise ConfigError(f"{option}: expected MODEL=PATH, got {item!r}")
        out[model] = path
    return out


def _per_attack_pairs(items: Sequence[str], option: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for key, path in _pairs(items, option).items():
        name, sep, model = key.partition("/")
        if not sep or not name or not model:
            raise ConfigError(f"{option}: expected ATTACK/MODEL=PATH, got {key}={path}")
        out.setdefault(name, {})[model] = path
    return out


def _port_value(port: Port, args: argparse.Namespace) -> Any:
    value = getattr(args, f"port_{port.name}")
    if port.kind == "per_model" and value is not None:
        return _pairs(value, port.option)
    if port.kind == "per_attack" and value is not None:
        return _per_attack_pairs(value, port.option)
    return value


def _run_stage_command(stage: Stage) -> Callable[[argparse.Namespace], None]:
    def command(args: argparse.Namespace) -> None:
        inputs = {port.name: _port_value(port, args) for port in stage.inputs}
        outputs = {port.name: _port_value(port, args) for port in stage.outputs}
        wildcards = {w.name: getattr(args, f"wildcard_{w.name}") for w in stage.wildcards}
        run_stage(
            stage.name,
            inputs,
            outputs,
            config=_raw_config(args),
            wildcards={k: v for k, v in wildcards.items() if v is not None},
        )

    return command


def _keys_of(stage: Stage) -> str:
    """The config keys a stage reads, for its --help."""
    schema = load_schema()["properties"]
    keys: list[str] = []
    for key in (*stage.reads, *(("device",) if stage.device else ())):
        section = schema.get(key, {})
        if section.get("type") == "object":
            keys += [f"{key}.{name}" for name in section.get("properties", {})]
        else:
            keys.append(key)
    return ", ".join(keys) or "none"


def _add_port(parser: argparse.ArgumentParser, port: Port, output: bool) -> None:
    metavar = {"per_model": "MODEL=PATH", "per_attack": "ATTACK/MODEL=PATH", "files": "PATH", "dir": "DIR"}.get(
        port.kind, "PATH"
    )
    many = {"nargs": "+"} if port.kind in ("files", "per_model", "per_attack") else {}
    kind = "output" if output else "input"
    parser.add_argument(
        port.option,
        dest=f"port_{port.name}",
        metavar=metavar,
        required=not port.optional,
        help=f"{kind}: {port.help}",
        type=str if port.kind in ("per_model", "per_attack") else Path,
        **many,
    )


def _add_stage(sub: Any, stage: Stage) -> None:
    epilog = f"config keys read: {_keys_of(stage)}" + (f"; seed recorded: {stage.seed}" if stage.seed else "")
    p = sub.add_parser(stage.command, help=stage.help, description=stage.help, epilog=epilog)
    for port in stage.inputs:
        _add_port(p, port, output=False)
    for port in stage.outputs:
        _add_port(p, port, output=True)
    for w in stage.wildcards:
        p.add_argument(
            f"--{w.name}",
            dest=f"wildcard_{w.name}",
            type=w.type,
            required=w.default is None,
            help=w.help + (f" (default {w.default})" if w.default is not None else ""),
        )
    _add_config_options(p)
    p.set_defaults(func=_run_stage_command(stage))


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (see config/config.yaml); defaults otherwise")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set attack.population=50 (repeatable)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onepixel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("validate-config", help="validate a config and print it with defaults filled")
    _add_config_options(p)
    p.set_defaults(func=_cmd_validate)
    sub.add_parser("models", help="list the model registry").set_defaults(func=_cmd_models)
    for stage in STAGES.values():
        _add_stage(sub, stage)
    p = sub.add_parser("receptive-fields", help="print the theoretical receptive field of each feature layer")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="an architecture of the registry (fresh weights)")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint (its input size and channels)")
    p.add_argument("--size", type=int, default=0, help="input side in pixels (default 32, or the checkpoint's)")
    p.add_argument("--channels", type=int, default=3, help="input channels for --model (default 3)")
    p.add_argument("--layers", nargs="*", help="module names (default: the model's feature layers)")
    p.set_defaults(func=_cmd_receptive_fields)
    p = sub.add_parser(
        "layers",
        help="print a model's default feature layers (capture.layers) and their output shapes",
        description="Default feature layers of a model, one per line with its output shape (C x H x W) at the input size.",
    )
    p.add_argument(
        "model",
        help="a registry model (lenet), torchvision:NAME (resnet18), program:FILE.pt2 or factory:pkg.mod:fn",
    )
    p.add_argument("--size", type=int, help="input side in pixels (default 32; torchvision 224; a program its own)")
    p.add_argument("--classes", type=int, help="classes (default 10; torchvision 1000; program/factory: its output)")
    p.add_argument("--channels", type=int, help="image channels (default 3; a program its own)")
    p.add_argument("--all", action="store_true", help="every capturable name: modules and torch.fx nodes")
    p.add_argument("--run-code", action="store_true", help="allow factory:pkg.mod:fn to run your code")
    p.set_defaults(func=_cmd_layers)
    p = sub.add_parser(
        "estimate",
        help="estimate each model's attack, vulnerability-map and locality time on one GPU from its FLOPs",
        description="Count each model's FLOPs per image (fresh weights, no download) and estimate the attack, "
        "vulnerability maps and locality of the study on one GPU: one line per model, a total, the assumptions.",
    )
    _add_config_options(p)
    from onepixel.estimate import DEFAULT_RATIO, DEFAULT_TFLOPS  # torch-free

    p.add_argument(
        "--tflops",
        default=str(DEFAULT_TFLOPS),
        help=f"sustained float32 TFLOP/s of your GPU (default {DEFAULT_TFLOPS:g}; see onepixel.estimate)",
    )
    p.add_argument(
        "--ratio", default=str(DEFAULT_RATIO), help=f"attack/forward throughput ratio (default {DEFAULT_RATIO:g})"
    )
    p.set_defaults(func=_cmd_estimate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onepixel`` command."""
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        # Ctrl-C and SIGTERM: one line, status 130 / 143; output files are written atomically, so
        # nothing partial is left behind
        with interrupts_as_one_line(args.command, sys.stderr):
            args.func(args)
    except (OnePixelError, OSError) as exc:
        line = user_error_line(exc)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except Interrupted as exc:
        return int(exc.code or 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
