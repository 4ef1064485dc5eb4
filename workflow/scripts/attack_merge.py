"""Snakemake adapter: merge the shard files of an attack (onepixel.attack.run_merge_stage)."""
from onepixel.attack import run_merge_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"])
with log_to(snakemake.log[0]), run:
    run_merge_stage(
        list(snakemake.input.shards),
        snakemake.output[0],
        selection_path=snakemake.input.selection,
    )
