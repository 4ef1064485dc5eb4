"""Snakemake adapter: select the images of a sharded attack once (onepixel.attack.run_select_stage)."""
from onepixel.attack import run_select_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"], device=snakemake.config["device"])
with log_to(snakemake.log[0], snakemake.threads), run:
    run_select_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.output[0],
        snakemake.config["attack"],
        device=snakemake.config["device"],
    )
