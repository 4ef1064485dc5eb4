"""Photographs from folders (torchvision's ImageFolder layout, ImageNet's validation images) as the netCDF data set.

Every image is decoded with Pillow and converted to RGB as torchvision's
``pil_loader`` does (no EXIF rotation), its shorter side resized to
``resize_size`` (bilinear, antialiased) and centre-cropped to ``image_size``:
torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)``, the
evaluation transform of its ImageNet weights. The data sets are test sets only;
each sample's path relative to the folder is kept in the variable ``file``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import xarray as xr

from onepixel.data.dataset import make_dataset
from onepixel.errors import ConfigError, DataError
from onepixel.files import one_line

#: the side of the stored images when ``image_size`` is 0 (torchvision's ImageNet weights)
DEFAULT_IMAGE_SIZE = 224
#: image_size / resize_size of torchvision's ImageNet evaluation (224 of 256)
CROP_FRACTION = 0.875
#: what ``bad_images`` may be
BAD_IMAGE_MODES = ("error", "skip")
#: ImageNet's classes
IMAGENET_CLASSES = 1000

_WNID = re.compile(r"n\d{8}")
_INDEX = re.compile(r"[+-]?[0-9]+")
_ID = re.compile(r"[0-9]+")
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.", re.IGNORECASE)

#: where notices go (one line each), or nowhere
Log: TypeAlias = Callable[[str], Any] | None


def image_extensions() -> tuple[str, ...]:
    """The file name endings read as images: torchvision's ``IMG_EXTENSIONS`` (lower case)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(IMG_EXTENSIONS)


def default_resize_size(image_size: int) -> int:
    """The shorter side before the centre crop: ``round(image_size / 0.875)`` (256 for 224)."""
    return round(image_size / CROP_FRACTION)


def _checked(image_size: int, resize_size: int, max_images: int, bad_images: str) -> tuple[int, int]:
    """``(image_size, resize_size)`` with 0 resolved (224, and image_size / 0.875); one-line errors for all four."""
    if bad_images not in BAD_IMAGE_MODES:
        raise ConfigError(f"dataset.bad_images: {bad_images!r}; allowed: {', '.join(BAD_IMAGE_MODES)}")
    if max_images < 0:
        raise ConfigError(f"dataset.max_images: {max_images} must be positive (or 0: all images)")
    if image_size < 0:
        raise ConfigError(f"dataset.image_size: {image_size} must be positive (or 0: {DEFAULT_IMAGE_SIZE})")
    if resize_size < 0:
        raise ConfigError(f"dataset.resize_size: {resize_size} must be positive (or 0: image_size / {CROP_FRACTION})")
    size = image_size or DEFAULT_IMAGE_SIZE
    resize = resize_size or default_resize_size(size)
    if resize < size:
        raise ConfigError(
            f"dataset.resize_size: {resize} is smaller than dataset.image_size {size}; "
            "the centre crop would pad the images with black"
        )
    return size, resize


def load_image(path: str | os.PathLike[str], image_size: int, resize_size: int = 0) -> np.ndarray:
    """One photograph as ``(3, image_size, image_size)`` uint8: RGB, shorter side resized, centre crop.

    Grayscale, palette, RGBA (the alpha channel is dropped) and CMYK images are
    converted with Pillow's ``convert("RGB")``, as torchvision's ``pil_loader``.
    The result equals torchvision's ``Resize(resize_size)`` + ``CenterCrop(image_size)``
    on that PIL image.

    Args:
        path: the image file.
        image_size: side of the square crop.
        resize_size: the shorter side before the crop; 0: ``round(image_size / 0.875)``.

    Raises:
        DataError: one line naming the file when it cannot be decoded (not an image,
            truncated, empty, unreadable).
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    resize = resize_size or default_resize_size(image_size)
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # loads the pixels: truncated files fail here
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not a decodable image (cannot identify image file)") from exc
    except OSError as exc:
        if exc.errno is None:  # Pillow's decoders: "image file is truncated", "broken data stream" ...
            raise DataError(f"{path}: not a decodable image ({one_line(str(exc))})") from exc
        raise DataError(f"{path}: image cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # Pillow's plugins also raise ValueError, SyntaxError, DecompressionBombError ...
        cause = one_line(str(exc) or type(exc).__name__)
        raise DataError(f"{path}: not a decodable image ({cause})") from exc
    resized = F.resize(rgb, [resize], interpolation=InterpolationMode.BILINEAR, antialias=True)
    cropped = F.center_crop(resized, [image_size, image_size])
    return np.asarray(cropped, dtype=np.uint8).transpose(2, 0, 1).copy()


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """The image files in ``folder`` (hidden ones left out), sorted as torchvision's ImageFolder sorts them."""
    extensions = image_extensions()
    found: list[Path] = []
    if not recursive:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not _is_hidden(e.name))
        return [folder / name for name in names if name.lower().endswith(extensions)]
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        if any(_is_hidden(part) for part in Path(dirpath).relative_to(folder).parts):
            continue
        found.extend(
            Path(dirpath) / name
            for name in sorted(filenames)
            if not _is_hidden(name) and name.lower().endswith(extensions)
        )
    return found


def _check_folder(root: Path, what: str) -> None:
    if not root.exists():
        raise DataError(f"{root}: {what} not found")
    if not root.is_dir():
        raise DataError(f"{root}: {what} is not a folder")


def _read_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (a BOM allowed); one-line errors naming it."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found" if not path.exists() else f"{path}: {what} is not a file")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: {what} cannot be read ({exc.strerror or exc})") from exc


def _decode(
    files: Sequence[Path],
    root: Path,
    *,
    image_size: int,
    resize_size: int,
    max_images: int,
    seed: int,
    bad_images: str,
    log: Log,
    desc: str,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode all files, or a sample of ``max_images`` drawn with ``default_rng(seed)``.

    In skip mode an undecodable file of the sample is left out (one line to ``log``)
    and replaced by the next file of the same random order, so the sample keeps
    ``max_images`` images while the folder has enough.

    Returns:
        ``(images, indices, skipped)``: ``(n, 3, S, S)`` uint8 in the order of
        ``indices`` (ascending positions in ``files``) and the number left out.
    """
    from onepixel.progress import Progress

    n = len(files)
    want = min(max_images, n) if max_images else n
    order = np.random.default_rng(seed).permutation(n) if want < n else np.arange(n)
    images = np.empty((want, 3, image_size, image_size), dtype=np.uint8)
    indices: list[int] = []
    skipped, pos = 0, 0
    with Progress(desc, want, "images") as progress:
        while len(indices) < want and pos < n:
            batch = np.sort(order[pos : pos + want - len(indices)])
            pos += len(batch)
            for i in batch.tolist():
                try:
                    images[len(indices)] = load_image(files[i], image_size, resize_size)
                except DataError as exc:
                    if bad_images == "error":
                        raise
                    skipped += 1
                    if log is not None:
                        log(f"{exc}; left out (dataset.bad_images: skip)")
                    continue
                indices.append(i)
                progress.update()
    if not indices:
        raise DataError(f"{root}: none of the {pos} images tried could be decoded (dataset.bad_images: skip)")
    kept = np.asarray(indices, dtype=np.int64)
    images = images[: len(kept)]
    if np.any(np.diff(kept) < 0):  # replacements for skipped files come after the first batch
        ranks = np.argsort(kept, kind="stable")
        kept, images = kept[ranks], images[ranks]
    return images, kept, skipped


def _finish(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    name: str,
    files: Sequence[str],
    attrs: dict[str, Any],
) -> xr.Dataset:
    ds = make_dataset(images, labels, class_names, name, "test")
    ds["file"] = xr.Variable(
        ("sample",), np.array(files, dtype=str), {"long_name": "image file, relative to source_root"}
    )
    ds.attrs.update(attrs)
    return ds


def _class_names(classes_file: Path, folders: Sequence[str], root: Path) -> list[str]:
    """The class names of ``classes_file`` (one per line, blank lines ignored), each a sub-folder of ``root``."""
    names: list[str] = []
    seen: dict[str, int] = {}
    present = set(folders)
    for number, line in enumerate(_read_lines(classes_file, "classes file"), start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise DataError(f"{classes_file}:{number}: class {name!r} is listed twice (first on line {seen[name]})")
        if name not in present:
            raise DataError(f"{classes_file}:{number}: class {name!r} is not a sub-folder of {root}")
        seen[name] = number
        names.append(name)
    if not names:
        raise DataError(f"{classes_file}: classes file lists no class")
    extra = [folder for folder in folders if folder not in seen]
    if extra:
        listed = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DataError(
            f"{classes_file}: does not list the sub-folder(s) {listed} of {root}; list every class folder, or move the others out"
        )
    return names


def read_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int,
    resize_size: int = 0,
    classes_file: str | os.PathLike[str] | None = None,
    max_images: int = 0,
    seed: int = 0,
    bad_images: str = "error",
    log: Log = print,
) -> xr.Dataset:
    """The test set of a folder of class sub-folders, ``root/<class>/<image>``, as torchvision's ImageFolder.

    Samples are in torchvision's order: class folders sorted, then the files of each
    sorted (sub-folders of a class folder are read too);
    hidden files and folders (``.name``) are left out, and files count as images by
    torchvision's ``IMG_EXTENSIONS``. Labels follow the sorted folder names, or the
    order of ``classes_file`` (one class name per line, each a sub-folder; every
    sub-folder must be listed).

    Args:
        root: the folder of class sub-folders.
        image_size: side of the stored images; 0: 224.
        resize_size: the shorter side before the centre crop; 0: ``round(image_size / 0.875)``.
        classes_file: optional text file of class names in label order.
        max_images: keep a sample of this many images (0: all), drawn with
            ``numpy.random.default_rng(seed)`` and kept in sorted order.
        seed: seed of that sample.
        bad_images: "error": the first undecodable image stops with a one-line
            DataError; "skip": it is left out, reported to ``log``, and counted.
        log: where notices go (one line each); None: nowhere.

    Returns:
        The data set "imagefolder", split "test", with the variable ``file(sample)``
        (paths relative to ``root``) and the attributes ``image_size``,
        ``resize_size``, ``source_root`` and ``bad_images_skipped``.

    Raises:
        DataError: one line naming the folder or file: no class folders, a class
            folder without images, a bad classes file, an undecodable image.
        ConfigError: a size, ``max_images`` or ``bad_images`` out of range.
    """
    size, resize = _checked(image_size, resize_size, max_images, bad_images)
    folder = Path(root)
    _check_folder(folder, "image folder")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _is_hidden(e.name))
    if not classes:
        loose = len(_images_in(folder, recursive=False))
        hint = f"; its {loose} image(s) must go into class sub-folders" if loose else ""
        raise DataError(
            f"{folder}: no class sub-folders (expected {folder}/<class>/<image>, as torchvision's ImageFolder){hint}"
        )
    names = _class_names(Path(classes_file), classes, folder) if classes_file else classes
    files: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    label_of = {name: label for label, name in enumerate(names)}
    for name in classes:  # torchvision's sample order: the sorted folders, whatever the label order
        found = _images_in(folder / name, recursive=True)
        files.extend(found)
        labels.extend([label_of[name]] * len(found))
        if not found:
            empty.append(name)
    if not files:
        raise DataError(
            f"{folder}: no images in its class sub-folders (file names ending {', '.join(image_extensions())})"
        )
    if empty:
        raise DataError(
            f"{folder / empty[0]}: class folder holds no image ({len(empty)} empty class folder(s) in {folder})"
        )
    images, kept, skipped = _decode(
        files,
        folder,
        image_size=size,
        resize_size=resize,
        max_images=max_images,
        seed=seed,
        bad_images=bad_images,
        log=log,
        desc="read imagefolder",
    )
    return _finish(
        images,
        np.asarray(labels, dtype=np.int64)[kept],
        names,
        "imagefolder",
        [files[i].relative_to(folder).as_posix() for i in kept],
        {"image_size": size, "resize_size": resize, "source_root": str(root), "bad_images_skipped": skipped},
    )


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in the index order of torchvision's ImageNet weights (sorted WordNet ids)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _meta_mat_for(labels_file: Path) -> Path | None:
    """The devkit's ``meta.mat`` beside ``labels_file`` or in ``../data/``, if there."""
    for candidate in (labels_file.parent / "meta.mat", labels_file.parent.parent / "data" / "meta.mat"):
        if candidate.is_file():
            return candidate
    return None


def read_meta_mat(path: str | os.PathLike[str]) -> dict[int, str]:
    """ILSVRC2012_ID (1-1000) -> WordNet id of the 1000 classes in the devkit's ``meta.mat``.

    The classes are the synsets without children, as torchvision's ``parse_devkit_archive`` reads them.

    Raises:
        DataError: one line naming the file: unreadable, or not 1000 classes with IDs 1-1000.
    """
    import scipy.io

    file = Path(path)
    try:
        synsets = scipy.io.loadmat(file, squeeze_me=True)["synsets"]
        ids = [int(i) for i in synsets["ILSVRC2012_ID"]]
        wnids = [str(w) for w in synsets["WNID"]]
        children = [int(c) for c in synsets["num_children"]]
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError ...; KeyError/ValueError for fields
        cause = one_line(f"{type(exc).__name__}: {exc}")
        raise DataError(
            f"{file}: not the ILSVRC2012 devkit's meta.mat (synsets with ILSVRC2012_ID, WNID, num_children): {cause}"
        ) from exc
    classes = {i: w for i, w, c in zip(ids, wnids, children, strict=True) if c == 0}
    if sorted(classes) != list(range(1, IMAGENET_CLASSES + 1)) or len(set(classes.values())) != IMAGENET_CLASSES:
        raise DataError(
            f"{file}: not the ILSVRC2012 devkit's meta.mat: {len(classes)} leaf synsets, "
            f"expected {IMAGENET_CLASSES} distinct WordNet ids with ILSVRC2012_ID 1-{IMAGENET_CLASSES}"
        )
    return classes


def _wnid_index(meta: Path) -> dict[str, int]:
    """WordNet id -> class index (torchvision's order: the sorted WordNet ids)."""
    return {wnid: index for index, wnid in enumerate(sorted(read_meta_mat(meta).values()))}


def _devkit_labels(labels_file: Path, lines: list[str], root: Path, names: Sequence[str], log: Log) -> np.ndarray:
    """Labels of the devkit's ground truth: line k holds the ILSVRC2012_ID of ILSVRC2012_val_<k>."""
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    ids: list[int] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not _ID.fullmatch(text) or not 1 <= int(text) <= IMAGENET_CLASSES:
            raise DataError(
                f"{labels_file}:{number}: expected one ILSVRC2012_ID 1-{IMAGENET_CLASSES} per line "
                f"(the devkit's validation ground truth), got {one_line(line, 60)!r}"
            )
        ids.append(int(text))
    meta = _meta_mat_for(labels_file)
    if meta is None:
        raise DataError(
            f"{labels_file}: the devkit's ground truth needs the devkit's meta.mat beside it or in "
            f"{labels_file.parent.parent / 'data'} (to map ILSVRC2012_IDs to torchvision's class order)"
        )
    id_to_wnid = read_meta_mat(meta)
    wnid_index = {wnid: index for index, wnid in enumerate(sorted(id_to_wnid.values()))}
    labels = []
    for name in names:
        match = _VAL_NAME.match(name)
        if match is None:
            raise DataError(
                f"{root / name}: no label: the devkit's ground truth {labels_file} labels only "
                "files named ILSVRC2012_val_<number>.JPEG"
            )
        number = int(match.group(1))
        if not 1 <= number <= len(ids):
            raise DataError(f"{root / name}: no label: {labels_file} has {len(ids)} lines, not line {number}")
        labels.append(wnid_index[id_to_wnid[ids[number - 1]]])
    if len(names) < len(ids) and log is not None:
        log(f"{root}: {len(names)} of the {len(ids)} validation images of {labels_file} are in the folder")
    return np.asarray(labels, dtype=np.int64)


def _named_labels(labels_file: Path, lines: list[str], root: Path, names: Sequence[str]) -> np.ndarray:
    """Labels of lines ``<file name> <class index 0-999 or WordNet id>``."""
    listed: dict[str, tuple[int, int | str]] = {}  # file name -> (line number, label)
    first_wnid = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not (_INDEX.fullmatch(parts[1]) or _WNID.fullmatch(parts[1])):
            raise DataError(
                f"{labels_file}:{number}: expected '<file name> <class index 0-999 or WordNet id>', "
                f"got {one_line(line, 60)!r}"
            )
        name, token = parts
        if name in listed:
            raise DataError(f"{labels_file}:{number}: {name} is listed twice (first on line {listed[name][0]})")
        label: int | str = token
        if _INDEX.fullmatch(token):
            label = int(token)
            if not 0 <= label < IMAGENET_CLASSES:
                raise DataError(
                    f"{labels_file}:{number}: class index {label} of {name} is out of 0-{IMAGENET_CLASSES - 1}"
                )
        else:
            first_wnid = first_wnid or number
        listed[name] = (number, label)
    if not listed:
        raise DataError(f"{labels_file}: labels file holds no label")
    present = set(names)
    for name, (number, _) in listed.items():
        if name not in present:
            raise DataError(f"{labels_file}:{number}: image {name} not found in {root}")
    wnid_index: dict[str, int] = {}
    if first_wnid:
        meta = _meta_mat_for(labels_file)
        if meta is None:
            raise DataError(
                f"{labels_file}:{first_wnid}: WordNet id labels need the devkit's meta.mat beside the labels file "
                f"(or in {labels_file.parent.parent / 'data'}) to map them to torchvision's class order; "
                f"or give class indices 0-{IMAGENET_CLASSES - 1}"
            )
        wnid_index = _wnid_index(meta)
    labels = []
    for name in names:
        if name not in listed:
            raise DataError(f"{root / name}: no label in {labels_file}")
        number, label = listed[name]
        if isinstance(label, str):
            if label not in wnid_index:
                raise DataError(
                    f"{labels_file}:{number}: {label} is not one of the {IMAGENET_CLASSES} ILSVRC2012 classes"
                )
            label = wnid_index[label]
        labels.append(label)
    return np.asarray(labels, dtype=np.int64)


def read_imagenet_labels(
    labels_file: str | os.PathLike[str], root: str | os.PathLike[str], names: Sequence[str], log: Log = print
) -> np.ndarray:
    """The class index (torchvision's ImageNet order) of each image file name in ``names`` (files of ``root``).

    ``labels_file`` holds either lines ``<file name> <label>`` (label: a class index
    0-999 or a WordNet id such as n01440764; WordNet ids need the devkit's ``meta.mat``
    beside the file or in ``../data/``) or, as the devkit's
    ``ILSVRC2012_validation_ground_truth.txt``, one ILSVRC2012_ID 1-1000 per line
    for ILSVRC2012_val_00000001, 00000002, ... (with ``meta.mat`` found the same way).
    The format is told by the first line: one number, or a name and a label.

    Raises:
        DataError: one line naming the file (and line): missing, a line that does not
            parse, an index out of range, an image listed but missing, an image without label.
    """
    path, folder = Path(labels_file), Path(root)
    lines = _read_lines(path, "labels file")
    first = next((line.split() for line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: labels file holds no label")
    if len(first) == 1 and _ID.fullmatch(first[0]):
        return _devkit_labels(path, lines, folder, names, log)
    return _named_labels(path, lines, folder, names)


def read_imagenet_val(
    root: str | os.PathLike[str],
    labels_file: str | os.PathLike[str],
    *,
    image_size: int,
    resize_size: int = 0,
    max_images: int = 0,
    seed: int = 0,
    bad_images: str = "error",
    log: Log = print,
) -> xr.Dataset:
    """The test set of ImageNet's validation images: a flat folder of images and ``labels_file``.

    The images are the folder's files with torchvision's image extensions (sorted,
    hidden ones left out); their labels come from ``labels_file`` (see
    :func:`read_imagenet_labels`), class indices and names are those of
    torchvision's ImageNet weights. The other arguments are those of :func:`read_image_folder`.

    Returns:
        The data set "imagenet-val", split "test", with the variable ``file(sample)``
        and the attributes ``image_size``, ``resize_size``, ``source_root``,
        ``labels_file`` and ``bad_images_skipped``.

    Raises:
        DataError: one line naming the folder or file (see :func:`read_imagenet_labels`).
    """
    size, resize = _checked(image_size, resize_size, max_images, bad_images)
    folder = Path(root)
    _check_folder(folder, "image folder")
    files = _images_in(folder, recursive=False)
    if not files:
        raise DataError(
            f"{folder}: no images in the folder (ImageNet's validation images, file names ending {', '.join(image_extensions())})"
        )
    names = [f.name for f in files]
    labels = read_imagenet_labels(labels_file, folder, names, log)
    images, kept, skipped = _decode(
        files,
        folder,
        image_size=size,
        resize_size=resize,
        max_images=max_images,
        seed=seed,
        bad_images=bad_images,
        log=log,
        desc="read imagenet-val",
    )
    return _finish(
        images,
        labels[kept],
        imagenet_categories(),
        "imagenet-val",
        [names[i] for i in kept],
        {
            "image_size": size,
            "resize_size": resize,
            "source_root": str(root),
            "labels_file": str(labels_file),
            "bad_images_skipped": skipped,
        },
    )
