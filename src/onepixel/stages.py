"""The stage registry: every stage of the study declared once, as data, for the CLI and the workflow alike.

A stage is one function of the library, ``run(job: Job) -> None``, and one
:class:`Stage` entry in :data:`STAGES` naming its config keys, the seed it
records, its inputs, outputs and wildcards. From that entry

* ``onepixel <stage> --<input> PATH ... --out PATH [--config FILE] [--set key=value]``
  is generated (:mod:`onepixel.cli`);
* one workflow script, ``workflow/scripts/stage.py``, runs the stage of any rule
  from the ``snakemake`` object (:func:`onepixel.workflow.job.run_snakemake_job`);
* the rule's ``params`` (so that a changed setting reruns it) are the values of
  the keys the stage reads (:func:`settings`).

Adding a stage: write its ``run(job)``, add its :class:`Stage` here, add its rule
(see docs/architecture.md).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onepixel.config import validate_config, with_attack
from onepixel.errors import ConfigError, DataError
from onepixel.files import unwritable_reason
from onepixel.provenance import run_context

#: how a port's paths are given: one file, one directory, a list of files, one file per model, or one file
#: per attack of the study and model (``{attack: {model: path}}``; attacks: :func:`onepixel.config.attack_names`)
PortKind = Literal["file", "dir", "files", "per_model", "per_attack"]


@dataclass(frozen=True)
class Port:
    """A named input or output of a stage."""

    name: str
    help: str
    kind: PortKind = "file"
    optional: bool = False

    @property
    def option(self) -> str:
        """The CLI option ``--<name>`` (dashes for underscores)."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Wildcard:
    """A value that names one job of a stage (the model, the shard): a rule wildcard, a CLI option."""

    name: str
    help: str
    type: type = str
    default: Any = None


@dataclass(frozen=True)
class Stage:
    """One stage of the study, declared once."""

    name: str  # the rule's name; the CLI sub-command is the name with dashes
    run: str  # "module:function" of the stage function run(job)
    help: str
    reads: tuple[str, ...]  # config keys the stage reads: sections ("attack") or keys ("locality.rings")
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    seed: str | None = None  # the config key of the seed that chose the stage's content, recorded in provenance
    wildcards: tuple[Wildcard, ...] = ()
    device: bool = False  # runs a model: reads `device`, and `threads` caps torch's threads in workflow jobs

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    def function(self) -> Callable[[Job], Any]:
        module, _, name = self.run.partition(":")
        function: Callable[[Job], Any] = getattr(importlib.import_module(module), name)
        return function


@dataclass(frozen=True)
class Job:
    """What a stage function gets: the whole validated config, its files by port name, its wildcards and a logger."""

    cfg: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    wildcards: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("onepixel"))

    def input(self, name: str) -> Path:
        """The input file or directory ``name``."""
        return Path(self.inputs[name])

    def output(self, name: str = "out") -> Path:
        """The output file or directory ``name``."""
        return Path(self.outputs[name])


_CHECKPOINT = Port("checkpoint", "model checkpoint (.pt), loaded with weights_only=True")
_TEST = Port("test", "test set (.nc) of `prepare-data`")
_ATTACK = Port("attack", "attack results (.nc) of `merge-attack`")


def _per_model(name: str, what: str) -> Port:
    return Port(name, f"{what} of each model, as MODEL=PATH", kind="per_model")


def _per_attack(name: str, what: str) -> Port:
    return Port(
        name, f"{what} of each attack (main or a name of attacks) and model, as ATTACK/MODEL=PATH", "per_attack"
    )


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "download_cifar10",
            "onepixel.data.stages:download_stage",
            "download and verify the official CIFAR-10 archive (python version)",
            reads=(),
            inputs=(),
            outputs=(Port("out", "the extracted cifar-10-batches-py folder", kind="dir"),),
        ),
        Stage(
            "prepare_data",
            "onepixel.data.stages:prepare_stage",
            "write a dataset's train and test splits as netCDF",
            reads=("dataset",),
            seed="dataset.seed",
            inputs=(
                Port(
                    "raw",
                    "CIFAR-10 files: the downloaded cifar-10-batches-py folder (without dataset.root)",
                    kind="files",
                    optional=True,
                ),
            ),
            outputs=(Port("train", "training split (.nc)"), Port("test", "test split (.nc)")),
        ),
        Stage(
            "train",
            "onepixel.train:train_stage",
            "train a model (or evaluate the user's checkpoint of train.checkpoints, or the model of model_sources) "
            "and write its test metrics",
            reads=("train", "model_sources"),
            seed="train.seed",
            device=True,
            wildcards=(
                Wildcard("model", "a registry architecture (see `onepixel models`) or a name of model_sources"),
            ),
            inputs=(
                Port("train", "training split (.nc)"),
                _TEST,
                Port("user_checkpoint", "a checkpoint to evaluate instead of training", kind="files", optional=True),
                Port(
                    "source_files",
                    "the files of its model_sources entry (state_dict, program), so that a new one reruns it",
                    kind="files",
                    optional=True,
                ),
            ),
            outputs=(Port("checkpoint", "output checkpoint (.pt)"), Port("metrics", "output metrics (.json)")),
        ),
        Stage(
            "select_images",
            "onepixel.attack.stage:select_stage",
            "select the correctly classified test images to attack (attack.num_images, attack.seed)",
            reads=("attack",),
            seed="attack.seed",
            device=True,
            inputs=(_CHECKPOINT, _TEST),
            outputs=(Port("out", "selection file (.json)"),),
        ),
        Stage(
            "attack",
            "onepixel.attack.stage:attack_stage",
            "one-pixel differential-evolution attack on one shard of the selected images",
            reads=("attack", "engine"),
            seed="attack.seed",
            device=True,
            wildcards=(Wildcard("shard", "shard to attack, 0 .. attack.shards - 1", int, 0),),
            inputs=(
                _CHECKPOINT,
                _TEST,
                Port("selection", "selection file (.json) of `select-images` (default: select here)", optional=True),
            ),
            outputs=(Port("out", "attack results of the shard (.nc)"),),
        ),
        Stage(
            "merge_attack",
            "onepixel.attack.stage:merge_stage",
            "merge the shard files of one attack into one attack file",
            reads=(),
            seed="attack.seed",
            inputs=(
                Port("shards", "every shard file of the attack", kind="files"),
                Port("selection", "selection file (.json): rows in its order, coverage checked", optional=True),
            ),
            outputs=(Port("out", "attack results (.nc)"),),
        ),
        Stage(
            "capture",
            "onepixel.capture:capture_stage",
            "capture per-layer activation cubes of the clean and adversarial images",
            reads=("capture",),
            seed="attack.seed",
            device=True,
            inputs=(_CHECKPOINT, _TEST, _ATTACK),
            outputs=(Port("out", "output directory (one .nc per layer, layers.json last)", kind="dir"),),
        ),
        Stage(
            "propagation",
            "onepixel.analysis.propagation:propagation_stage",
            "propagation maps (PMmax / PMavg) from the activation cubes",
            reads=("propagation",),
            seed="attack.seed",
            inputs=(Port("cubes", "directory written by `capture`", kind="dir"),),
            outputs=(Port("out", "propagation maps (.nc)"),),
        ),
        Stage(
            "locality",
            "onepixel.analysis.locality:locality_stage",
            "locality analysis: each successful attack's colour at ring distances 1..D and at random positions",
            reads=("locality", "engine"),
            seed="locality.seed",
            device=True,
            inputs=(_CHECKPOINT, _TEST, _ATTACK),
            outputs=(Port("out", "locality analysis (.nc)"),),
        ),
        Stage(
            "vulnerability",
            "onepixel.analysis.vulnerability:vulnerability_stage",
            "vulnerability maps (each attack's colour at every position), their correlograms, the receptive fields",
            reads=("vulnerability", "locality.rings", "engine"),
            seed="vulnerability.seed",
            device=True,
            inputs=(_CHECKPOINT, _TEST, _ATTACK),
            outputs=(Port("out", "vulnerability maps (.nc)"),),
        ),
        Stage(
            "figures",
            "onepixel.figures.stages:figures_stage",
            "propagation-map grids, average propagation maps, success against distance, PMs against depth",
            reads=("dataset.name", "figures"),
            seed="attack.seed",
            inputs=(
                _TEST,
                _per_model("attack", "attack results"),
                _per_model("propagation", "propagation maps"),
                _per_model("locality", "locality analysis"),
            ),
            outputs=(Port("out", "output directory of the figures", kind="dir"),),
        ),
        Stage(
            "locality_figures",
            "onepixel.figures.stages:locality_figures_stage",
            "locality table, receptive-field overlay, effective receptive fields, vulnerability-map examples",
            reads=("dataset.name", "figures"),
            inputs=(
                _TEST,
                _per_model("locality", "locality analysis"),
                _per_model("vulnerability", "vulnerability maps"),
            ),
            outputs=(Port("out", "output directory of the figures", kind="dir"),),
        ),
        Stage(
            "comparison",
            "onepixel.analysis.comparison:comparison_stage",
            "the study's attacks side by side: DE against the exhaustive sweep, propagation-map statistics per layer",
            reads=("attacks", "dataset.name", "figures"),
            seed="attack.seed",
            inputs=(
                _per_attack("attack", "attack results"),
                _per_attack("propagation", "propagation maps"),
                Port("test", "test set (.nc): with it, the perturbations' sizes (L-inf, L2, L0)", optional=True),
            ),
            outputs=(
                Port("out", "comparison.json: the numbers"),
                Port("table", "tables of the report (.html)"),
                Port("csv", "propagation-map statistics per model, attack and layer (.csv)"),
                Port("figures", "output directory of the comparison figures", kind="dir"),
            ),
        ),
        Stage(
            "summary",
            "onepixel.summary:summary_stage",
            "headline numbers across models (DVC metrics), plot tables and the metrics page of the report",
            reads=("dataset.name",),
            seed="attack.seed",
            inputs=(
                _per_model("metrics", "metrics (.json)"),
                _per_model("attack", "attack results"),
                _per_model("propagation", "propagation maps"),
                _per_model("locality", "locality analysis"),
                Port("comparison", "comparison.json of `comparison` (with attacks)", optional=True),
            ),
            outputs=(
                Port("summary", "summary.json: the headline numbers (DVC metrics)"),
                Port("provenance", "provenance of summary.json (.json): config, code version, device"),
                Port("models_csv", "per-model table (.csv)"),
                Port("locality_csv", "per-distance table (.csv)"),
                Port("table", "metrics page (.html)"),
            ),
        ),
    )
}


def get_stage(name: str) -> Stage:
    """The stage called ``name`` (rule name, or CLI name with dashes)."""
    stage = STAGES.get(name.replace("-", "_"))
    if stage is None:
        raise ConfigError(f"stage {name!r} is unknown; stages: {', '.join(STAGES)}")
    return stage


def config_value(cfg: Mapping[str, Any], key: str) -> Any:
    """The value of a dotted config key such as ``locality.rings``."""
    value: Any = cfg
    for part in key.split("."):
        value = value[part]
    return value


def settings(stage: Stage | str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config values a stage reads, by key, plus ``device`` for stages that run a model.

    A workflow rule declares these as its params, so that changing one of them
    reruns exactly the jobs that read it.
    """
    stage = get_stage(stage) if isinstance(stage, str) else stage
    keys = (*stage.reads, *(("device",) if stage.device else ()))
    return {key: config_value(cfg, key) for key in keys}


def _check_ports(stage: Stage, given: Mapping[str, Any], ports: tuple[Port, ...], what: str) -> dict[str, Any]:
    names = {port.name for port in ports}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(
            f"{stage.command}: unknown {what} {unknown[0]!r}; {what}s: {', '.join(sorted(names)) or 'none'}"
        )
    files: dict[str, Any] = {}
    for port in ports:
        value = given.get(port.name)
        if value is None or (port.kind in ("files", "per_model", "per_attack") and not value):
            if not port.optional:
                raise ConfigError(f"{stage.command}: {what} {port.name!r} is required ({port.help})")
            value = [] if port.kind == "files" else None
        files[port.name] = _as_paths(port, value) if value is not None else None
    return files


def _check_same_models(stage: Stage, inputs: Mapping[str, Any]) -> None:
    """Every ``per_model`` input of a stage must name the same models (those of its first such input)."""
    ports = [port for port in stage.inputs if port.kind == "per_model" and inputs.get(port.name)]
    if not ports:
        return
    models = list(inputs[ports[0].name])
    for port in ports[1:]:
        missing = [model for model in models if model not in inputs[port.name]]
        extra = [model for model in inputs[port.name] if model not in models]
        if missing or extra:
            which = missing or extra
            where = port.name if missing else ports[0].name
            raise ConfigError(
                f"{stage.command}: no {where} file given for model(s) {', '.join(which)}; "
                f"every per-model input needs one file for each of {', '.join(models)}"
            )


def _as_paths(port: Port, value: Any) -> Any:
    if port.kind == "files":
        return [Path(v) for v in ([value] if isinstance(value, (str, os.PathLike)) else value)]
    if port.kind == "per_model":
        return {str(model): Path(path) for model, path in dict(value).items()}
    if port.kind == "per_attack":
        return {
            str(name): {str(m): Path(path) for m, path in dict(paths).items()} for name, paths in dict(value).items()
        }
    return Path(value)


def _check_wildcards(stage: Stage, given: Mapping[str, Any]) -> dict[str, Any]:
    known = {w.name: w for w in stage.wildcards}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"{stage.command}: unknown wildcard {unknown[0]!r}; allowed: {', '.join(known) or 'none'}")
    values = {}
    for name, wildcard in known.items():
        value = given.get(name, wildcard.default)
        if value is None:
            raise ConfigError(f"{stage.command}: --{name} is required ({wildcard.help})")
        try:
            values[name] = wildcard.type(value)
        except ValueError as exc:
            raise ConfigError(f"{stage.command}: --{name} {value!r} is not a {wildcard.type.__name__}") from exc
    return values


def _check_writable(stage: Stage, outputs: Mapping[str, Any]) -> None:
    """Every output location can take files: checked before the stage runs, not found out at its last write."""
    for port in stage.outputs:
        value = outputs.get(port.name)
        paths = [] if value is None else list(value.values()) if isinstance(value, dict) else value
        for path in paths if isinstance(paths, list) else [paths]:
            path = Path(path)
            if port.kind == "dir":
                reason = f"{path} is a file, not a folder" if path.is_file() else unwritable_reason(path)
            else:
                reason = f"{path} is a folder" if path.is_dir() else unwritable_reason(path.parent)
            if reason:
                raise DataError(
                    f"{stage.command}: cannot write output {port.name!r} to {path} ({reason}); "
                    "nothing was run: give a writable location"
                )


def run_stage(
    name: str,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    wildcards: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
    validated: bool = False,
    attack: str | None = None,
) -> Any:
    """Run stage ``name`` on the given files: the one way every caller (CLI, workflow, tests) runs a stage.

    Args:
        inputs, outputs: path(s) per port name (a list for ``files`` ports, a
            ``{model: path}`` mapping for ``per_model`` ports).
        config: a whole config (defaults filled in for missing keys), validated here
            unless ``validated``.
        wildcards: the job's wildcards (e.g. ``model``, ``shard``).
        attack: one of the study's further attacks (a name of config ``attacks``): the stage
            runs with it as the config's ``attack`` section (:func:`onepixel.config.with_attack`);
            its files record the study's config (digest, ``study_config``) all the same.

    The stage runs inside :func:`onepixel.provenance.run_context`, so every file it
    writes records the config digest, the stage's seed and the device.

    Raises:
        ConfigError: an unknown stage, a missing or unknown port or wildcard, or a bad config value.
        DataError: an output location that cannot be written (checked before the stage runs).
    """
    stage = get_stage(name)
    cfg = dict(config) if validated and config is not None else validate_config(config or {})
    files = _check_ports(stage, inputs, stage.inputs, "input")
    _check_same_models(stage, files)
    job = Job(
        cfg=with_attack(cfg, attack) if attack else cfg,
        inputs=files,
        outputs=_check_ports(stage, outputs, stage.outputs, "output"),
        wildcards=_check_wildcards(stage, wildcards or {}),
        log=log or logging.getLogger(f"onepixel.{stage.name}"),
    )
    _check_writable(stage, job.outputs)
    seed = config_value(job.cfg, stage.seed) if stage.seed else None
    with run_context(cfg, seed=seed, device=cfg["device"] if stage.device else None):
        return stage.function()(job)
