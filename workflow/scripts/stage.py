"""Every rule's script: run the onepixel stage registered under the rule's name (onepixel.stages)."""

from onepixel.workflow.job import run_snakemake_job

run_snakemake_job(snakemake)
