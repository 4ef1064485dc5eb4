"""Snakemake adapter: locality analysis (onepixel.locality.run_locality_stage)."""
from onepixel.locality import run_locality_stage
from onepixel.utils import log_to

cfg = snakemake.config["locality"]
with log_to(snakemake.log[0], snakemake.threads):
    run_locality_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.input.attack,
        snakemake.output[0],
        max_distance=cfg["max_distance"],
        random_positions=cfg["random_positions"],
        seed=cfg["seed"],
        device=snakemake.config["device"],
    )
