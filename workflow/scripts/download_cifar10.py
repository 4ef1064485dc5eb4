"""Snakemake adapter: download and verify CIFAR-10 (onepixel.data.download_cifar10)."""
from pathlib import Path

from onepixel.data import download_cifar10
from onepixel.jobs import log_to

with log_to(snakemake.log[0]):
    download_cifar10(Path(snakemake.output[0]).parent)
