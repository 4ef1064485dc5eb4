"""Snakemake adapter: metrics across models for DVC (onepixel.summary.write_summary)."""
from onepixel.summary import write_summary
from onepixel.jobs import log_to
from onepixel.provenance import run_context

run = run_context(snakemake.config, seed=snakemake.config["attack"]["seed"])
with log_to(snakemake.log[0]), run:
    write_summary(
        snakemake.params.metrics,
        snakemake.params.attack,
        snakemake.params.propagation,
        snakemake.params.locality,
        snakemake.output.summary,
        models_csv=snakemake.output.models_csv,
        locality_csv=snakemake.output.locality_csv,
        html_path=snakemake.output.table,
        dataset=snakemake.config["dataset"]["name"],
    )
