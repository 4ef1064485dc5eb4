"""Snakemake adapter: propagation maps (onepixel.propagation.run_propagation_stage)."""
from onepixel.propagation import run_propagation_stage
from onepixel.utils import log_to

cfg = snakemake.config["propagation"]
with log_to(snakemake.log[0]):
    run_propagation_stage(
        snakemake.input[0],
        snakemake.output[0],
        normalisation=cfg["normalisation"],
        spread_threshold=cfg["spread_threshold"],
    )
