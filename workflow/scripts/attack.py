"""Snakemake adapter: one-pixel DE attack (onepixel.attack.run_attack_stage).

Used by rule `attack` (attack.shards == 1: select the images and attack them all)
and by rule `attack_shard` (attack.shards > 1: attack shard {shard} of the
selection written by rule `attack_select`).
"""
from onepixel.attack import run_attack_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

shard = snakemake.wildcards.get("shard")
sharded = {} if shard is None else {
    "shard": int(shard),
    "shards": int(snakemake.config["attack"]["shards"]),
    "selection_path": snakemake.input.selection,
}
run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"], device=snakemake.config["device"])
with log_to(snakemake.log[0], snakemake.threads), run:
    run_attack_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.output[0],
        snakemake.config["attack"],
        device=snakemake.config["device"],
        **sharded,
    )
