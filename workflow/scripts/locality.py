"""Snakemake adapter: locality analysis (onepixel.analysis.locality.run_locality_stage)."""
from onepixel.analysis.locality import run_locality_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

cfg = snakemake.config["locality"]
run = run_context(snakemake.config, seed=snakemake.config["locality"]["seed"], device=snakemake.config["device"])
with log_to(snakemake.log[0], snakemake.threads), run:
    run_locality_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.input.attack,
        snakemake.output[0],
        max_distance=cfg["max_distance"],
        random_positions=cfg["random_positions"],
        seed=cfg["seed"],
        device=snakemake.config["device"],
        rings=cfg["rings"],
    )
