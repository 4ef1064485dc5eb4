"""Where the files of a pre-staged CIFAR-10 copy are (``dataset.root``).

Only the layout is checked here (which files exist), not their content, and
nothing heavy is imported: config validation and the workflow's parse step use
it. Reading and checksum verification live in :mod:`onepixel.data.cifar10`.
"""

from __future__ import annotations

import os
from pathlib import Path

from onepixel.errors import DataError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
#: the files of a CIFAR-10 batch folder, in reading order
CIFAR10_FILE_NAMES = ("batches.meta", *TRAIN_BATCHES, "test_batch")


def locate_cifar10(root: str | os.PathLike[str]) -> tuple[str, Path]:
    """Where a pre-staged CIFAR-10 copy lies: ``("archive", file)`` or ``("folder", batch_dir)``.

    ``root`` is the ``cifar-10-batches-py`` folder itself, a folder containing it,
    or a file: the official ``cifar-10-python.tar.gz`` (any tar archive holding
    that folder).

    Raises:
        DataError: ``root`` does not exist, or is a folder that holds neither
            ``cifar-10-batches-py`` nor any CIFAR-10 batch file.
    """
    path = Path(root)
    if path.is_file():
        return "archive", path
    if path.is_dir():
        if (path / CIFAR10_FOLDER).is_dir():
            return "folder", path / CIFAR10_FOLDER
        if any((path / name).exists() for name in CIFAR10_FILE_NAMES):
            return "folder", path
        raise DataError(
            f"{path}: not a CIFAR-10 folder: it holds neither {CIFAR10_FOLDER}/ nor the batch files "
            f"{', '.join(CIFAR10_FILE_NAMES)}"
        )
    raise DataError(
        f"{path}: CIFAR-10 root not found (give the {CIFAR10_FOLDER} folder, a folder holding it, or {CIFAR10_ARCHIVE})"
    )


def cifar10_root_files(root: str | os.PathLike[str]) -> list[Path]:
    """The files a pre-staged CIFAR-10 copy at ``root`` is read from (the workflow's inputs).

    Raises:
        DataError: as :func:`locate_cifar10`, or naming a batch file missing from the folder.
    """
    kind, path = locate_cifar10(root)
    if kind == "archive":
        return [path]
    files = [path / name for name in CIFAR10_FILE_NAMES]
    for file in files:
        if not file.is_file():
            raise DataError(f"{file}: CIFAR-10 batch file not found")
    return files
