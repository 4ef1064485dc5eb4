"""Snakemake adapter: write train.nc / test.nc (onepixel.data.prepare_dataset)."""
from pathlib import Path

from onepixel.data import prepare_dataset
from onepixel.jobs import log_to
from onepixel.provenance import run_context

cfg = snakemake.config["dataset"]
run = run_context(snakemake.config, seed=snakemake.config["dataset"]["seed"])
with log_to(snakemake.log[0]), run:
    prepare_dataset(
        snakemake.wildcards.dataset,
        Path(snakemake.output.train).parent,
        raw_root=Path(snakemake.input[0]).parent if snakemake.input and not cfg["root"] else None,
        test_fraction=cfg["test_fraction"],
        seed=cfg["seed"],
        root=cfg["root"] or None,
    )
