"""Snakemake adapter: propagation maps (onepixel.analysis.propagation.run_propagation_stage)."""
from onepixel.analysis.propagation import run_propagation_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

cfg = snakemake.config["propagation"]
run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"])
with log_to(snakemake.log[0]), run:
    run_propagation_stage(
        snakemake.input[0],
        snakemake.output[0],
        normalisation=cfg["normalisation"],
        spread_threshold=cfg["spread_threshold"],
    )
