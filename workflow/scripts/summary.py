"""Snakemake adapter: metrics across models for DVC (onepixel.summary.write_summary)."""
from onepixel.summary import write_summary
from onepixel.utils import log_to

with log_to(snakemake.log[0]):
    write_summary(
        snakemake.params.metrics,
        snakemake.params.attack,
        snakemake.params.propagation,
        snakemake.params.locality,
        snakemake.output[0],
    )
