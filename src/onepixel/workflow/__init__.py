"""The workflow's edge: running a registered stage as a Snakemake job, and sharing results with DVC."""
