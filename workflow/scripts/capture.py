"""Snakemake adapter: per-layer activation cubes (onepixel.capture.run_capture_stage)."""
from onepixel.capture import run_capture_stage
from onepixel.utils import log_to

cfg = snakemake.config["capture"]
with log_to(snakemake.log[0], snakemake.threads):
    run_capture_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.input.attack,
        snakemake.output[0],
        layers=cfg["layers"] or None,
        batch_size=cfg["batch_size"],
        device=snakemake.config["device"],
    )
