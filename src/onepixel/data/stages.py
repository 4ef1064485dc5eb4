"""The data stages of the workflow: download CIFAR-10, and write a dataset's splits as netCDF."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from onepixel.config import FOLDER_DATASETS
from onepixel.data import dataset_splits, download_cifar10, save_dataset
from onepixel.errors import ConfigError
from onepixel.stages import Job


def download_stage(job: Job) -> None:
    """Download and verify CIFAR-10; the output is the extracted ``cifar-10-batches-py`` folder."""
    download_cifar10(job.output().parent, log=job.log.info)


def folder_sizes(config: Mapping[str, Any]) -> dict[str, int]:
    """``image_size`` and ``resize_size`` of a folder data set, 0 resolved from what the study's models expect.

    ``dataset.image_size: 0`` takes the crop size of the models' weights (or their
    ``input_size``), and ``resize_size: 0`` then their resize size; with no such
    model both stay 0 (224, and image_size / 0.875). Models that expect different
    sizes need ``dataset.image_size`` given: a one-line ConfigError names them.
    """
    from onepixel.models.sources import expected_image_sizes

    dataset = config["dataset"]
    image_size, resize_size = int(dataset.get("image_size", 0)), int(dataset.get("resize_size", 0))
    if image_size or dataset["name"] not in FOLDER_DATASETS:
        return {"image_size": image_size, "resize_size": resize_size}
    expected = expected_image_sizes(config.get("models", []), config.get("model_sources", {}))
    crops = sorted({crop for crop, _ in expected.values()})
    if len(crops) > 1:
        listed = ", ".join(f"{name} {crop}" for name, (crop, _) in expected.items())
        raise ConfigError(
            f"dataset.image_size: 0 takes the size the models expect, but they differ ({listed}); "
            "give dataset.image_size (each model resizes to its own input_size inside)"
        )
    if not crops:
        return {"image_size": 0, "resize_size": resize_size}
    resizes = {resize for crop, resize in expected.values()}
    return {"image_size": crops[0], "resize_size": resize_size or (resizes.pop() if len(resizes) == 1 else 0)}


def prepare_stage(job: Job) -> None:
    """Write the ``train`` and ``test`` splits of ``dataset.name`` (``dataset.root`` or the ``raw`` download).

    The folder data sets (imagefolder, imagenet-val) read ``dataset.root`` with ``dataset.classes``,
    ``labels_file``, ``image_size``, ``resize_size``, ``max_images``, ``bad_images`` and ``seed``;
    their train split holds no image.
    """
    cfg = job.cfg["dataset"]
    raw = job.inputs["raw"]
    raw_root = raw[0].parent if raw and not cfg["root"] else None
    splits = dataset_splits(
        cfg["name"],
        raw_root,
        cfg["test_fraction"],
        cfg["seed"],
        cfg["root"] or None,
        log=job.log.info,
        classes=cfg.get("classes") or None,
        labels_file=cfg.get("labels_file") or None,
        **folder_sizes(job.cfg),
        max_images=cfg.get("max_images", 0),
        bad_images=cfg.get("bad_images", "error"),
    )
    for ds, name in zip(splits, ("train", "test"), strict=True):
        save_dataset(ds, job.output(name))
