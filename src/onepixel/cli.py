"""Command-line interface: one sub-command per stage of the study.

Every sub-command reads the stage's settings from ``--config`` (validated,
defaults filled; without it the defaults apply) and takes its files as
arguments, so the library runs without Snakemake. User errors print one line
``error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from onepixel.config import load_config, validate_config
from onepixel.errors import OnePixelError
from onepixel.jobs import configure_logging


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return load_config(args.config) if args.config else validate_config({})


def _cmd_validate(args: argparse.Namespace) -> None:
    print(json.dumps(_config(args), indent=2, sort_keys=True))


def _cmd_models(args: argparse.Namespace) -> None:
    from onepixel.models import MODEL_NAMES, build_model, count_parameters

    for name in MODEL_NAMES:
        params = count_parameters(build_model(name, num_classes=10, in_channels=3, image_size=32))
        print(f"{name:10s} {params:>10,d} parameters (32x32x3, 10 classes)")


def _cmd_prepare(args: argparse.Namespace) -> None:
    from onepixel.data import prepare_dataset

    cfg = _config(args)["dataset"]
    root = args.root or cfg["root"] or None
    name = args.name or ("cifar10" if args.root else cfg["name"])
    paths = prepare_dataset(name, args.out, raw_root=args.raw_root, test_fraction=cfg["test_fraction"], seed=cfg["seed"],
                            root=root, log=lambda line: print(line, file=sys.stderr))
    print("\n".join(str(p) for p in paths))


def _cmd_train(args: argparse.Namespace) -> None:
    from onepixel.train import run_train_stage

    cfg = _config(args)
    user_checkpoint = args.load or cfg["train"]["checkpoints"].get(args.model)
    run_train_stage(args.model, args.train, args.test, args.checkpoint, args.metrics, cfg["train"],
                    device=cfg["device"], user_checkpoint=user_checkpoint)


def _cmd_attack(args: argparse.Namespace) -> None:
    from onepixel.attack import run_attack_stage

    cfg = _config(args)
    run_attack_stage(args.checkpoint, args.test, args.out, cfg["attack"], device=cfg["device"],
                     shard=args.shard, shards=args.shards, selection_path=args.selection)


def _cmd_select_images(args: argparse.Namespace) -> None:
    from onepixel.attack import run_select_stage

    cfg = _config(args)
    run_select_stage(args.checkpoint, args.test, args.out, cfg["attack"], device=cfg["device"])


def _cmd_merge_attack(args: argparse.Namespace) -> None:
    from onepixel.attack import run_merge_stage

    run_merge_stage(args.shards, args.out, selection_path=args.selection)


def _cmd_capture(args: argparse.Namespace) -> None:
    from onepixel.capture import run_capture_stage

    cfg = _config(args)
    layers = args.layers or cfg["capture"]["layers"] or None
    run_capture_stage(args.checkpoint, args.test, args.attack, args.out, layers=layers,
                      batch_size=cfg["capture"]["batch_size"], device=cfg["device"],
                      compression=cfg["capture"]["compression"])


def _cmd_propagation(args: argparse.Namespace) -> None:
    from onepixel.analysis.propagation import run_propagation_stage

    cfg = _config(args)["propagation"]
    run_propagation_stage(args.cubes, args.out, normalisation=cfg["normalisation"],
                          spread_threshold=cfg["spread_threshold"])


def _cmd_locality(args: argparse.Namespace) -> None:
    from onepixel.analysis.locality import run_locality_stage

    cfg = _config(args)
    loc = cfg["locality"]
    run_locality_stage(args.checkpoint, args.test, args.attack, args.out, max_distance=loc["max_distance"],
                       random_positions=loc["random_positions"], seed=loc["seed"], device=cfg["device"],
                       rings=loc["rings"])


def _cmd_vulnerability(args: argparse.Namespace) -> None:
    from onepixel.analysis.vulnerability import run_vulnerability_stage

    cfg = _config(args)
    vul = cfg["vulnerability"]
    run_vulnerability_stage(args.checkpoint, args.test, args.attack, args.out, max_attacks=vul["max_attacks"],
                            batch_size=vul["batch_size"], rings=cfg["locality"]["rings"], erf_layer=vul["erf_layer"],
                            seed=cfg["locality"]["seed"], device=cfg["device"])


def _cmd_receptive_fields(args: argparse.Namespace) -> None:
    from onepixel.analysis.receptive_field import theoretical_receptive_fields
    from onepixel.models import build_model, load_checkpoint

    if args.checkpoint:
        model, meta = load_checkpoint(args.checkpoint)
        channels, size = meta["build_kwargs"].get("in_channels", 3), args.size or meta["build_kwargs"].get("image_size", 32)
    else:
        channels, size = args.channels, args.size or 32
        model = build_model(args.model, in_channels=channels, image_size=size)
    fields = theoretical_receptive_fields(model, (channels, size, size), args.layers or None)
    print(f"{'layer':24s} {'size':>6s} {'stride':>6s} {'start':>6s}   ({channels}x{size}x{size} input; size unclipped)")
    for layer, rf in fields.items():
        print(f"{layer:24s} {rf.size:6d} {rf.stride:6d} {rf.start:6g}")


def _cmd_locality_figures(args: argparse.Namespace) -> None:
    from onepixel.figures import run_locality_figures_stage

    cfg = _config(args)
    localities = _pairs(args.locality, "locality")
    run_locality_figures_stage(args.dataset, list(localities), args.test, localities,
                               _pairs(args.vulnerability, "vulnerability"), args.out,
                               examples=cfg["figures"]["examples"], formats=tuple(cfg["figures"]["formats"]))


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        model, sep, path = item.partition("=")
        if not sep:
            raise OnePixelError(f"--{what}: expected MODEL=PATH, got {item!r}")
        out[model] = path
    return out


def _cmd_figures(args: argparse.Namespace) -> None:
    from onepixel.figures import run_figures_stage

    cfg = _config(args)
    attacks = _pairs(args.attack, "attack")
    run_figures_stage(args.dataset, list(attacks), args.test, attacks, _pairs(args.propagation, "propagation"),
                      _pairs(args.locality, "locality"), args.out, examples=cfg["figures"]["examples"],
                      formats=tuple(cfg["figures"]["formats"]))


def _cmd_summary(args: argparse.Namespace) -> None:
    from onepixel.summary import write_summary

    write_summary(_pairs(args.metrics, "metrics"), _pairs(args.attack, "attack"),
                  _pairs(args.propagation, "propagation"), _pairs(args.locality, "locality"), args.out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onepixel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", type=Path, help="YAML config (see config/config.yaml); defaults otherwise")
        p.set_defaults(func=func)
        return p

    add("validate-config", _cmd_validate, "validate a config and print it with defaults filled")
    add("models", _cmd_models, "list the model registry")
    p = add("prepare-data", _cmd_prepare, "write a dataset as train.nc / test.nc")
    p.add_argument("--name", help="digits or cifar10 (default: dataset.name of the config)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--raw-root", type=Path, help="where downloads go (cifar10)")
    p.add_argument("--root", type=Path, help="read CIFAR-10 from this pre-staged copy instead of downloading it: the "
                   "cifar-10-batches-py folder, a folder holding it, or cifar-10-python.tar.gz (implies --name cifar10; "
                   "default: dataset.root of the config)")
    p = add("train", _cmd_train, "train a model (or load a user's checkpoint) and write its test metrics")
    p.add_argument("--model", required=True)
    p.add_argument("--train", type=Path, required=True, help="train.nc")
    p.add_argument("--test", type=Path, required=True, help="test.nc")
    p.add_argument("--checkpoint", type=Path, required=True, help="output checkpoint (.pt)")
    p.add_argument("--metrics", type=Path, required=True, help="output metrics (.json)")
    p.add_argument("--load", help="evaluate this checkpoint instead of training (weights_only load)")
    p = add("attack", _cmd_attack, "one-pixel differential-evolution attack on correctly classified test images")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="attack results (.nc)")
    p.add_argument("--shard", type=int, default=0, help="attack only this shard, 0..SHARDS-1 (default 0)")
    p.add_argument("--shards", type=int, default=1,
                   help="split the selected images into this many disjoint shards (default 1: no split)")
    p.add_argument("--selection", type=Path, help="selection file from `select-images` (default: select here)")
    p = add("select-images", _cmd_select_images,
            "select the test images of a sharded attack once (attack.num_images, attack.seed)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="selection file (.json)")
    p = add("merge-attack", _cmd_merge_attack, "merge the shard files of one attack into one attack file")
    p.add_argument("--shards", type=Path, nargs="+", required=True, metavar="SHARD.nc", help="all shard files")
    p.add_argument("--selection", type=Path, help="selection file: rows in its order, coverage checked")
    p.add_argument("--out", type=Path, required=True, help="merged attack results (.nc)")
    p = add("capture", _cmd_capture, "capture per-layer activation cubes of clean and adversarial images")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--attack", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output directory (one .nc per layer)")
    p.add_argument("--layers", nargs="*", help="module or torch.fx node names (default: the model's feature layers)")
    p = add("propagation", _cmd_propagation, "propagation maps (PMmax/PMavg) from activation cubes")
    p.add_argument("--cubes", type=Path, required=True, help="directory written by `capture`")
    p.add_argument("--out", type=Path, required=True)
    p = add("locality", _cmd_locality, "locality analysis: the attack's colour at Chebyshev distances 1..D")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--attack", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = add("vulnerability", _cmd_vulnerability, "vulnerability maps: each attack's colour at every position, "
            "their correlograms, the receptive fields")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--attack", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p = add("receptive-fields", _cmd_receptive_fields, "print the theoretical receptive field of each feature layer")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="an architecture of the registry (fresh weights)")
    which.add_argument("--checkpoint", type=Path, help="a checkpoint (its input size and channels)")
    p.add_argument("--size", type=int, default=0, help="input side in pixels (default 32, or the checkpoint's)")
    p.add_argument("--channels", type=int, default=3, help="input channels for --model (default 3)")
    p.add_argument("--layers", nargs="*", help="module names (default: the model's feature layers)")
    p = add("locality-figures", _cmd_locality_figures,
            "locality table, receptive-field overlay, effective receptive fields, vulnerability-map examples")
    p.add_argument("--dataset", required=True, help="dataset name for titles")
    p.add_argument("--test", type=Path, required=True)
    for name in ("locality", "vulnerability"):
        p.add_argument(f"--{name}", nargs="+", required=True, metavar="MODEL=PATH")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p = add("figures", _cmd_figures, "propagation-map grids, average PMs, success vs distance")
    p.add_argument("--dataset", required=True, help="dataset name for titles")
    p.add_argument("--test", type=Path, required=True)
    for name in ("attack", "propagation", "locality"):
        p.add_argument(f"--{name}", nargs="+", required=True, metavar="MODEL=PATH")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p = add("summary", _cmd_summary, "one metrics JSON across models (DVC metrics)")
    for name in ("metrics", "attack", "propagation", "locality"):
        p.add_argument(f"--{name}", nargs="+", required=True, metavar="MODEL=PATH")
    p.add_argument("--out", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onepixel`` command."""
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        args.func(args)
    except OnePixelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # output files are written atomically: nothing partial is left behind
        print("error: interrupted; files not written yet were discarded, run the command again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
