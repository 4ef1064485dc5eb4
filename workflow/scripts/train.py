"""Snakemake adapter: train a model or load the user's checkpoint (onepixel.train.run_train_stage)."""
from onepixel.train import run_train_stage
from onepixel.jobs import log_to
from onepixel.provenance import run_context

run = run_context(snakemake.config, seed=snakemake.config["train"]["seed"], device=snakemake.config["device"])
with log_to(snakemake.log[0], snakemake.threads), run:
    run_train_stage(
        snakemake.wildcards.model,
        snakemake.input.train,
        snakemake.input.test,
        snakemake.output.checkpoint,
        snakemake.output.metrics,
        snakemake.config["train"],
        device=snakemake.config["device"],
        user_checkpoint=snakemake.input.user_checkpoint[0] if snakemake.input.user_checkpoint else None,
    )
