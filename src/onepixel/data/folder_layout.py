"""The files of an image-folder data set, found without torch (the workflow's main process lists them as inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: file name endings read as images: torchvision's ``IMG_EXTENSIONS`` (tests/test_image_data.py keeps them equal)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def image_folder_files(dataset: dict[str, Any]) -> list[str]:
    """The files ``dataset.root`` contributes (its images, sorted), and ``dataset.classes`` / ``.labels_file``.

    A changed, added or removed image then reruns the data set's preparation.
    """
    root = Path(dataset["root"])
    images = sorted(
        str(path)
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and _visible(path, root)
    )
    return images + [dataset[key] for key in ("classes", "labels_file") if dataset.get(key)]
