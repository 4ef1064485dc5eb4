"""Snakemake adapter: locality table, receptive-field overlay, ERF and vulnerability maps (onepixel.figures.run_locality_figures_stage)."""
from onepixel.figures import run_locality_figures_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

cfg = snakemake.config["figures"]
run = run_context(snakemake.config)
with log_to(snakemake.log[0]), run:
    run_locality_figures_stage(
        snakemake.config["dataset"]["name"],
        snakemake.params.models,
        snakemake.input.test,
        snakemake.params.locality,
        snakemake.params.vulnerability,
        snakemake.params.out_dir,
        examples=cfg["examples"],
        formats=tuple(cfg["formats"]),
    )
