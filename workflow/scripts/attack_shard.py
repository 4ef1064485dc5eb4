"""Snakemake adapter: attack one shard of the selected images (onepixel.attack.run_attack_stage)."""
from onepixel.attack import run_attack_stage
from onepixel.utils import log_to

with log_to(snakemake.log[0], snakemake.threads):
    run_attack_stage(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.output[0],
        snakemake.config["attack"],
        device=snakemake.config["device"],
        shard=int(snakemake.wildcards.shard),
        shards=int(snakemake.config["attack"]["shards"]),
        selection_path=snakemake.input.selection,
    )
