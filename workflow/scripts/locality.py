"""Snakemake adapter: locality analysis (onepixel.locality.run_locality_stage)."""
from onepixel.locality import run_locality_stage
from onepixel.utils import log_to, run_context

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
