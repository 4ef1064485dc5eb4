"""Snakemake adapter: figures (onepixel.figures.run_figures_stage)."""
from onepixel.figures import run_figures_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

cfg = snakemake.config["figures"]
run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"])
with log_to(snakemake.log[0]), run:
    run_figures_stage(
        snakemake.config["dataset"]["name"],
        snakemake.params.models,
        snakemake.input.test,
        snakemake.params.attack,
        snakemake.params.propagation,
        snakemake.params.locality,
        snakemake.params.out_dir,
        examples=cfg["examples"],
        formats=tuple(cfg["formats"]),
    )
