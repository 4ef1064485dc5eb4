"""The data stages of the workflow: download CIFAR-10, and write a dataset's splits as netCDF."""

from __future__ import annotations

from onepixel.data import dataset_splits, download_cifar10, save_dataset
from onepixel.stages import Job


def download_stage(job: Job) -> None:
    """Download and verify CIFAR-10; the output is the extracted ``cifar-10-batches-py`` folder."""
    download_cifar10(job.output().parent, log=job.log.info)


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
        image_size=cfg.get("image_size", 0),
        resize_size=cfg.get("resize_size", 0),
        max_images=cfg.get("max_images", 0),
        bad_images=cfg.get("bad_images", "error"),
    )
    for ds, name in zip(splits, ("train", "test"), strict=True):
        save_dataset(ds, job.output(name))
