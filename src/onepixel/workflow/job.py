"""Run the registered stage of a Snakemake rule from the ``snakemake`` object of its script."""

from __future__ import annotations

from typing import Any

from onepixel.config import attack_names
from onepixel.jobs import log_to
from onepixel.stages import Port, get_stage, run_stage

#: the wildcard of the rules of the study's further attacks (config ``attacks``): the attack's name
ATTACK_WILDCARD = "attack_name"


def _named(namedlist: Any, name: str) -> Any:
    """``namedlist.name`` of a Snakemake Namedlist, or ``None`` when it has no such entry."""
    # `in namedlist` tests its values (paths), not its names
    return getattr(namedlist, name) if name in namedlist.keys() else None  # noqa: SIM118


def _port_value(port: Port, snakemake: Any, files: Any) -> Any:
    """The path(s) of ``port`` in the rule's input/output (or, for a directory port, its params)."""
    value = _named(files, port.name)
    if value is None:
        value = _named(snakemake.params, port.name)
    if port.kind == "per_model":
        paths = [] if value is None else list(value)
        models = list(snakemake.config["models"])
        if len(paths) != len(models):
            raise RuntimeError(f"rule {snakemake.rule}: input {port.name} needs one file per model in config order")
        return dict(zip(models, paths, strict=True))
    if port.kind == "per_attack":
        names, models = attack_names(snakemake.config), list(snakemake.config["models"])
        paths = [] if value is None else list(value)
        if len(paths) != len(names) * len(models):
            raise RuntimeError(f"rule {snakemake.rule}: input {port.name} needs one file per attack and model")
        rows = [paths[i * len(models) : (i + 1) * len(models)] for i in range(len(names))]
        return {name: dict(zip(models, row, strict=True)) for name, row in zip(names, rows, strict=True)}
    if port.kind == "files":
        return [] if value is None else ([value] if isinstance(value, str) else list(value))
    if value is not None and not isinstance(value, str):  # an optional file the rule gives as [] or [path]
        return value[0] if len(value) else None
    return value


def run_snakemake_job(snakemake: Any) -> Any:
    """Run the stage named like the rule (or by its ``params.stage``), its files taken from the rule by port name.

    A rule of one of the study's further attacks (wildcard ``attack_name``) runs its stage with
    that attack as the config's ``attack`` section (``run_stage(..., attack=name)``).
    The job's stdout, stderr and log records go to the rule's log file; a user error
    ends the job with one line ``error: ...`` and exit status 2 (:func:`onepixel.jobs.log_to`).
    """
    stage = get_stage(_named(snakemake.params, "stage") or snakemake.rule)
    given = snakemake.wildcards.keys()
    attack = snakemake.wildcards[ATTACK_WILDCARD] if ATTACK_WILDCARD in given else None
    inputs = {port.name: _port_value(port, snakemake, snakemake.input) for port in stage.inputs}
    outputs = {port.name: _port_value(port, snakemake, snakemake.output) for port in stage.outputs}
    wildcards = {w.name: snakemake.wildcards[w.name] for w in stage.wildcards if w.name in given}
    threads = snakemake.threads if stage.device else None
    with log_to(snakemake.log[0], threads, what=stage.command):
        return run_stage(
            stage.name, inputs, outputs, config=snakemake.config, wildcards=wildcards, validated=True, attack=attack
        )
