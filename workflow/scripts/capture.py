"""Snakemake adapter: per-layer activation cubes (onepixel.capture.run_capture_stage)."""
from onepixel.capture import run_capture_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

cfg = snakemake.config["capture"]
run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"], device=snakemake.config["device"])
with log_to(snakemake.log[0], snakemake.threads), run:
    run_capture_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.input.attack,
        snakemake.output[0],
        layers=cfg["layers"] or None,
        batch_size=cfg["batch_size"],
        device=snakemake.config["device"],
        compression=cfg["compression"],
    )
