"""Tests of onepixel.data.images: folders of real photographs (scikit-image's) as the netCDF data set."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import skimage.data
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.datasets import imagenet as tv_imagenet

from onepixel.data import (
    dataset_splits,
    imagenet_categories,
    load_dataset,
    load_image,
    prepare_dataset,
    read_image_folder,
    read_imagenet_val,
    read_meta_mat,
)
from onepixel.data.stages import prepare_stage
from onepixel.errors import ConfigError, DataError

SIZE = 32  # small crops keep the tests fast; the equality with torchvision is checked at 224 too


def _photos() -> dict[str, Image.Image]:
    """scikit-image's photographs as PIL images of several modes."""
    chelsea = Image.fromarray(skimage.data.chelsea())
    return {
        "chelsea": chelsea,  # RGB 451x300
        "chelsea_palette": chelsea.convert("P", palette=Image.Palette.ADAPTIVE),
        "coffee": Image.fromarray(skimage.data.coffee()),  # RGB 600x400
        "rocket": Image.fromarray(skimage.data.rocket()),  # RGB 640x427
        "camera": Image.fromarray(skimage.data.camera()),  # grayscale L 512x512
        "logo": Image.fromarray(skimage.data.logo()),  # RGBA 500x500
        "camera_cmyk": Image.fromarray(skimage.data.camera()).convert("CMYK"),
    }


#: class folder -> (file, photo) of the image-folder fixture; one file in a nested folder
FOLDER_LAYOUT = {
    "cat": [("chelsea.jpg", "chelsea"), ("chélsea palette.png", "chelsea_palette")],
    "cup": [("coffee.jpg", "coffee"), ("more/logo.png", "logo")],
    "scene": [("camera.png", "camera"), ("camera_cmyk.jpg", "camera_cmyk"), ("rocket.JPEG", "rocket")],
}
N_FOLDER = sum(len(files) for files in FOLDER_LAYOUT.values())

#: the ImageNet-val fixture: file name -> (photo, class index, WordNet id of the fake devkit)
VAL_NAMES = [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 6)]
VAL_PHOTOS = ["chelsea", "coffee", "rocket", "camera", "logo"]
VAL_INDICES = [281, 967, 657, 872, 744]


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg") and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    image.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG", quality=92)


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return _photos()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos) -> Path:
    root = tmp_path_factory.mktemp("imagefolder") / "photos"
    for cls, files in FOLDER_LAYOUT.items():
        for name, photo in files:
            _save(photos[photo], root / cls / name)
    return root


@pytest.fixture
def folder_copy(folder, tmp_path) -> Path:
    """A copy of the image folder to change."""
    return Path(shutil.copytree(folder, tmp_path / "photos"))


#: a fake ILSVRC2012 devkit: 1000 leaf synsets (WordNet ids whose sorted order is not their ILSVRC2012_ID order)
#: and two inner synsets, which are no classes
FAKE_WNIDS = [f"n{10_000_000 + 37 * k:08d}" for k in range(1000)]  # sorted: index k
FAKE_IDS = np.random.default_rng(1).permutation(1000) + 1  # ILSVRC2012_ID of class index k


def _write_meta_mat(path: Path) -> None:
    """A meta.mat in the devkit's structure: ``synsets`` with the fields torchvision's parse_meta_mat reads."""
    fields = [
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    ]
    synsets = np.zeros((1002, 1), dtype=[(name, "O") for name in fields])
    order = np.argsort(FAKE_IDS)  # the devkit lists the classes by ILSVRC2012_ID
    for row, k in enumerate(order):
        synsets[row, 0] = (
            int(FAKE_IDS[k]),
            FAKE_WNIDS[k],
            f"class {k}, thing {k}",
            "a thing",
            0,
            np.zeros((0,)),
            0,
            1300,
        )
    for row, wnid in ((1000, "n00001740"), (1001, "n00002137")):  # inner synsets: ids past 1000, children
        synsets[row, 0] = (row + 1, wnid, "entity", "inner", 2, np.array([1, 2]), 5, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})


@pytest.fixture(scope="module")
def val(tmp_path_factory, photos) -> Path:
    """ImageNet-val layout: val/ (flat), labels in both formats, devkit/data/{meta.mat, ground truth}."""
    base = tmp_path_factory.mktemp("imagenet")
    for name, photo in zip(VAL_NAMES, VAL_PHOTOS, strict=True):
        _save(photos[photo], base / "val" / name)
    lines = [f"{name} {index}" for name, index in zip(VAL_NAMES, VAL_INDICES, strict=True)]
    (base / "val_indices.txt").write_text("\n".join(lines) + "\n")
    _write_meta_mat(base / "devkit" / "data" / "meta.mat")
    # the fake devkit's classes: image i has class index VAL_INDICES[i], so ILSVRC2012_ID FAKE_IDS[that]
    truth = [str(FAKE_IDS[index]) for index in VAL_INDICES]
    (base / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(truth) + "\n")
    wnid_lines = [f"{name}\t{FAKE_WNIDS[index]}" for name, index in zip(VAL_NAMES, VAL_INDICES, strict=True)]
    (base / "devkit" / "data" / "val_wnids.txt").write_text("\n".join(wnid_lines) + "\n")
    return base


def _torchvision(path: Path, size: int, resize: int) -> np.ndarray:
    """torchvision's evaluation transform on its pil_loader's image."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return T.Compose([T.Resize(resize), T.CenterCrop(size), T.PILToTensor()])(rgb).numpy()


def _one_line_error(exc: pytest.ExceptionInfo, *names: object) -> str:
    message = str(exc.value)
    assert "\n" not in message
    for name in names:
        assert str(name) in message
    return message


# ---------------------------------------------------------------- load_image


@pytest.mark.parametrize(
    "name", ["cat/chelsea.jpg", "cat/chélsea palette.png", "cup/more/logo.png", "scene/camera.png"]
)
def test_load_image_equals_torchvision_resize_and_center_crop(folder, name):
    path = folder / name
    image = load_image(path, 224)  # resize 256, as torchvision's ImageNet weights
    assert image.shape == (3, 224, 224) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, _torchvision(path, 224, 256))
    np.testing.assert_array_equal(load_image(path, SIZE, 40), _torchvision(path, SIZE, 40))


def test_load_image_default_resize_is_image_size_over_0875(folder):
    path = folder / "scene" / "rocket.JPEG"
    np.testing.assert_array_equal(load_image(path, SIZE), _torchvision(path, SIZE, round(SIZE / 0.875)))  # 37


def test_load_image_converts_every_mode_to_rgb(folder, photos):
    gray = load_image(folder / "scene" / "camera.png", SIZE)
    np.testing.assert_array_equal(gray[0], gray[1])
    np.testing.assert_array_equal(gray[0], gray[2])
    logo = load_image(folder / "cup" / "more" / "logo.png", SIZE)  # RGBA: the alpha channel is dropped
    rgb = photos["logo"].convert("RGB").resize((37, 37), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(logo, np.asarray(rgb)[2:34, 2:34].transpose(2, 0, 1))
    assert load_image(folder / "scene" / "camera_cmyk.jpg", SIZE).shape == (3, SIZE, SIZE)


def _broken_files(folder: Path, where: Path) -> dict[str, Path]:
    where.mkdir(parents=True, exist_ok=True)
    data = (folder / "cat" / "chelsea.jpg").read_bytes()
    files = {"truncated": where / "truncated.jpg", "empty": where / "empty.png", "text": where / "notes.jpg"}
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["empty"].write_bytes(b"")
    files["text"].write_text("not an image\n")
    return files


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("truncated", "not a decodable image (image file is truncated"),
        ("empty", "not a decodable image (cannot identify image file)"),
        ("text", "not a decodable image (cannot identify image file)"),
    ],
)
def test_an_undecodable_image_is_one_line_naming_the_file(folder, tmp_path, kind, cause):
    path = _broken_files(folder, tmp_path)[kind]
    with pytest.raises(DataError) as exc:
        load_image(path, SIZE)
    assert _one_line_error(exc, path).startswith(f"{path}: {cause}")


# ---------------------------------------------------------------- read_image_folder


def test_read_image_folder_matches_torchvision_image_folder(folder):
    ds = read_image_folder(folder, image_size=SIZE, log=None)
    reference = ImageFolder(str(folder), transform=T.Compose([T.Resize(37), T.CenterCrop(SIZE), T.PILToTensor()]))
    assert list(ds["class_name"].values) == reference.classes == ["cat", "cup", "scene"]
    assert [str(folder / f) for f in ds["file"].values] == [path for path, _ in reference.samples]
    np.testing.assert_array_equal(ds["label"].values, reference.targets)
    np.testing.assert_array_equal(ds["image"].values, np.stack([reference[i][0].numpy() for i in range(N_FOLDER)]))
    assert list(ds["file"].values) == [
        "cat/chelsea.jpg",
        "cat/chélsea palette.png",
        "cup/coffee.jpg",
        "cup/more/logo.png",
        "scene/camera.png",
        "scene/camera_cmyk.jpg",
        "scene/rocket.JPEG",
    ]
    assert ds["image"].shape == (N_FOLDER, 3, SIZE, SIZE)
    assert ds.attrs == {
        "dataset": "imagefolder",
        "split": "test",
        "image_size": SIZE,
        "resize_size": 37,
        "source_root": str(folder),
        "bad_images_skipped": 0,
    }


def test_classes_file_sets_the_label_order(folder, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("scene\n\ncup\ncat\n")
    ds = read_image_folder(folder, image_size=SIZE, classes_file=classes, log=None)
    assert list(ds["class_name"].values) == ["scene", "cup", "cat"]
    reference = ImageFolder(str(folder))
    assert [str(folder / f) for f in ds["file"].values] == [path for path, _ in reference.samples]  # the same order
    np.testing.assert_array_equal(ds["label"].values, [2, 2, 1, 1, 0, 0, 0])


def test_hidden_files_and_other_files_are_left_out(folder_copy):
    (folder_copy / "cat" / "._chelsea.jpg").write_bytes(b"\0\5\26\7 resource fork")
    (folder_copy / "cat" / "notes.txt").write_text("not an image")
    (folder_copy / "cat" / ".ipynb_checkpoints").mkdir()
    (folder_copy / "cat" / ".ipynb_checkpoints" / "x.jpg").write_bytes(b"junk")
    (folder_copy / ".trash").mkdir()
    (folder_copy / ".trash" / "y.png").write_bytes(b"junk")
    ds = read_image_folder(folder_copy, image_size=SIZE, log=None)
    assert list(ds["class_name"].values) == ["cat", "cup", "scene"]
    assert ds.sizes["sample"] == N_FOLDER


def test_max_images_is_a_seeded_sample_in_sorted_order(folder):
    full = read_image_folder(folder, image_size=SIZE, log=None)
    first = read_image_folder(folder, image_size=SIZE, max_images=3, seed=5, log=None)
    again = read_image_folder(folder, image_size=SIZE, max_images=3, seed=5, log=None)
    other = read_image_folder(folder, image_size=SIZE, max_images=3, seed=6, log=None)
    chosen = np.sort(np.random.default_rng(5).permutation(N_FOLDER)[:3])
    assert list(first["file"].values) == list(full["file"].values[chosen])
    np.testing.assert_array_equal(first["image"].values, full["image"].values[chosen])
    np.testing.assert_array_equal(first["label"].values, full["label"].values[chosen])
    assert list(again["file"].values) == list(first["file"].values)
    assert list(other["file"].values) != list(first["file"].values)
    assert list(first["class_name"].values) == ["cat", "cup", "scene"]  # every class kept
    assert read_image_folder(folder, image_size=SIZE, max_images=100, log=None).sizes["sample"] == N_FOLDER


def test_a_bad_image_stops_in_one_line_or_is_skipped_and_counted(folder_copy):
    broken = _broken_files(folder_copy, folder_copy / "cup")
    with pytest.raises(DataError) as exc:
        read_image_folder(folder_copy, image_size=SIZE, log=None)
    assert _one_line_error(exc).startswith(f"{broken['empty']}: not a decodable image")  # the first, sorted
    notices: list[str] = []
    ds = read_image_folder(folder_copy, image_size=SIZE, bad_images="skip", log=notices.append)
    assert ds.attrs["bad_images_skipped"] == 3
    assert ds.sizes["sample"] == N_FOLDER
    assert len(notices) == 3 and all("\n" not in line and "left out" in line for line in notices)
    assert [line.split(":")[0] for line in notices] == [str(broken[k]) for k in ("empty", "text", "truncated")]


def test_skipped_images_of_a_sample_are_replaced_from_the_same_order(folder_copy):
    _broken_files(folder_copy, folder_copy / "cup")
    samples = [Path(p).relative_to(folder_copy).as_posix() for p, _ in ImageFolder(str(folder_copy)).samples]
    broken = {"cup/empty.png", "cup/notes.jpg", "cup/truncated.jpg"}
    kept: list[int] = []
    drawn = 0
    for i in np.random.default_rng(2).permutation(len(samples)):  # the first 6 decodable ones of the seeded order
        drawn += 1
        if samples[i] not in broken:
            kept.append(int(i))
        if len(kept) == 6:
            break
    skipped = sum(samples[i] in broken for i in np.random.default_rng(2).permutation(len(samples))[:drawn])
    assert skipped >= 1  # the seed draws a broken file
    ds = read_image_folder(folder_copy, image_size=SIZE, max_images=6, seed=2, bad_images="skip", log=None)
    assert list(ds["file"].values) == [samples[i] for i in sorted(kept)]
    assert ds.attrs["bad_images_skipped"] == skipped


def test_no_decodable_image_in_skip_mode_is_one_line_naming_the_root(folder, tmp_path):
    root = tmp_path / "root"
    _broken_files(folder, root / "junk")
    with pytest.raises(DataError) as exc:
        read_image_folder(root, image_size=SIZE, bad_images="skip", log=None)
    assert _one_line_error(exc) == f"{root}: none of the 3 images tried could be decoded (dataset.bad_images: skip)"


@pytest.mark.parametrize("mode", ["no sub-folders", "loose images", "empty classes"])
def test_no_images_is_one_line_naming_the_root(folder, tmp_path, mode):
    root = tmp_path / "root"
    root.mkdir()
    if mode == "loose images":
        shutil.copy(folder / "cat" / "chelsea.jpg", root)
    if mode == "empty classes":
        (root / "a").mkdir()
        (root / "b").mkdir()
    with pytest.raises(DataError) as exc:
        read_image_folder(root, image_size=SIZE, log=None)
    assert _one_line_error(exc).startswith(f"{root}: no ")


def test_folder_errors_are_one_line(folder_copy, tmp_path):
    with pytest.raises(DataError) as exc:
        read_image_folder(tmp_path / "nowhere", image_size=SIZE)
    _one_line_error(exc, tmp_path / "nowhere", "not found")
    (folder_copy / "dog").mkdir()
    with pytest.raises(DataError) as exc:
        read_image_folder(folder_copy, image_size=SIZE)
    assert _one_line_error(exc).startswith(f"{folder_copy / 'dog'}: class folder holds no image")


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("cat\ncup\nscene\nbird\n", ":4: class 'bird' is not a sub-folder of"),
        ("cat\ncup\n", "does not list the sub-folder(s) scene of"),
        ("cat\ncup\ncat\nscene\n", ":3: class 'cat' is listed twice (first on line 1)"),
        ("\n\n", "classes file lists no class"),
    ],
)
def test_a_bad_classes_file_is_one_line_naming_it(folder, tmp_path, text, expect):
    classes = tmp_path / "classes.txt"
    classes.write_text(text)
    with pytest.raises(DataError) as exc:
        read_image_folder(folder, image_size=SIZE, classes_file=classes)
    assert expect in _one_line_error(exc, classes)
    with pytest.raises(DataError) as exc:
        read_image_folder(folder, image_size=SIZE, classes_file=tmp_path / "missing.txt")
    _one_line_error(exc, tmp_path / "missing.txt", "classes file not found")


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"resize_size": 20}, "dataset.resize_size: 20 is smaller than dataset.image_size 32"),
        ({"bad_images": "ignore"}, "dataset.bad_images: 'ignore'; allowed: error, skip"),
        ({"max_images": -1}, "dataset.max_images: -1"),
    ],
)
def test_bad_options_are_config_errors(folder, options, expect):
    with pytest.raises(ConfigError, match=expect):
        read_image_folder(folder, image_size=SIZE, **options)


# ---------------------------------------------------------------- read_imagenet_val


def _expected_val(val: Path) -> np.ndarray:
    return np.stack([_torchvision(val / "val" / name, SIZE, 37) for name in VAL_NAMES])


def test_imagenet_val_with_class_indices(val):
    ds = read_imagenet_val(val / "val", val / "val_indices.txt", image_size=SIZE, log=None)
    assert list(ds["file"].values) == VAL_NAMES
    np.testing.assert_array_equal(ds["label"].values, VAL_INDICES)
    names = ds["class_name"].values
    assert len(names) == 1000 and list(names[:2]) == ["tench", "goldfish"]
    assert [names[i] for i in ds["label"].values] == ["tabby", "espresso", "missile", "tripod", "projectile"]
    np.testing.assert_array_equal(ds["image"].values, _expected_val(val))
    assert ds.attrs["dataset"] == "imagenet-val" and ds.attrs["split"] == "test"
    assert ds.attrs["labels_file"] == str(val / "val_indices.txt") and ds.attrs["resize_size"] == 37


def test_read_meta_mat_agrees_with_torchvision_devkit_parser(val, tmp_path, monkeypatch):
    """torchvision's own parse_devkit_archive (its parse_meta_mat and ground-truth reader) on the same devkit."""
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(val / "devkit", arcname="ILSVRC2012_devkit_t12")
    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *args: None)  # our fake devkit has its own md5
    tv_imagenet.parse_devkit_archive(str(tmp_path))
    wnid_to_classes, val_wnids = torch.load(tmp_path / "meta.bin", weights_only=True)
    wnids = sorted(wnid_to_classes)  # torchvision.datasets.ImageNet's class order (its sorted val/<wnid> folders)
    assert wnids == FAKE_WNIDS and sorted(read_meta_mat(val / "devkit" / "data" / "meta.mat").values()) == wnids
    assert read_meta_mat(val / "devkit" / "data" / "meta.mat")[int(FAKE_IDS[7])] == FAKE_WNIDS[7]
    ds = read_imagenet_val(
        val / "val", val / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt", image_size=SIZE, log=None
    )
    np.testing.assert_array_equal(ds["label"].values, [wnids.index(w) for w in val_wnids])
    np.testing.assert_array_equal(ds["label"].values, VAL_INDICES)


def test_imagenet_val_with_wordnet_ids_and_meta_mat(val):
    ds = read_imagenet_val(val / "val", val / "devkit" / "data" / "val_wnids.txt", image_size=SIZE, log=None)
    np.testing.assert_array_equal(ds["label"].values, VAL_INDICES)


def test_devkit_meta_mat_in_data_folder_and_subset_notice(val, tmp_path):
    other = tmp_path / "devkit" / "other"
    other.mkdir(parents=True)
    shutil.copytree(val / "devkit" / "data", tmp_path / "devkit" / "data")
    truth = (val / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt").read_text()
    (other / "truth.txt").write_text(truth + "1\n2\n")  # the ground truth of two more images not in the folder
    notices: list[str] = []
    ds = read_imagenet_val(val / "val", other / "truth.txt", image_size=SIZE, max_images=2, seed=0, log=notices.append)
    chosen = np.sort(np.random.default_rng(0).permutation(5)[:2])
    np.testing.assert_array_equal(ds["label"].values, np.asarray(VAL_INDICES)[chosen])
    assert notices == [f"{val / 'val'}: 5 of the 7 validation images of {other / 'truth.txt'} are in the folder"]


def _val_copy(val: Path, tmp_path: Path, labels: str, name: str = "labels.txt") -> tuple[Path, Path]:
    root = Path(shutil.copytree(val / "val", tmp_path / "val"))
    path = tmp_path / name
    path.write_text(labels)
    return root, path


VALID = "\n".join(f"{n} {i}" for n, i in zip(VAL_NAMES, VAL_INDICES, strict=True))


@pytest.mark.parametrize(
    ("labels", "expect"),
    [
        (VALID.replace(" 281", ""), "labels.txt:1: expected '<file name> <class index 0-999 or WordNet id>'"),
        (VALID.replace(" 967", " cup"), "labels.txt:2: expected '<file name> <class index 0-999 or WordNet id>'"),
        (
            VALID.replace(" 657", " 1000"),
            "labels.txt:3: class index 1000 of ILSVRC2012_val_00000003.JPEG is out of 0-999",
        ),
        (VALID.replace(" 657", " -1"), "labels.txt:3: class index -1 of ILSVRC2012_val_00000003.JPEG is out of 0-999"),
        (VALID + "\nILSVRC2012_val_00000009.JPEG 3", "labels.txt:6: image ILSVRC2012_val_00000009.JPEG not found in"),
        (VALID.rsplit("\n", 1)[0], "ILSVRC2012_val_00000005.JPEG: no label in"),
        (
            VALID + "\n" + VALID.split("\n")[0],
            "labels.txt:6: ILSVRC2012_val_00000001.JPEG is listed twice (first on line 1)",
        ),
        (VALID.replace(" 872", " n01440764"), "labels.txt:4: WordNet id labels need the devkit's meta.mat"),
        ("\n\n", "labels.txt: labels file holds no label"),
    ],
)
def test_a_bad_labels_file_is_one_line(val, tmp_path, labels, expect):
    root, path = _val_copy(val, tmp_path, labels)
    with pytest.raises(DataError) as exc:
        read_imagenet_val(root, path, image_size=SIZE, log=None)
    assert expect in _one_line_error(exc)


@pytest.mark.parametrize(
    ("labels", "expect"),
    [
        ("12\n7\nfoo\n", "ILSVRC2012_validation_ground_truth.txt:3: expected one ILSVRC2012_ID 1-1000 per line"),
        ("12\n\n7\n", "ILSVRC2012_validation_ground_truth.txt:2: expected one ILSVRC2012_ID 1-1000 per line"),
        ("12\n1001\n", "ILSVRC2012_validation_ground_truth.txt:2: expected one ILSVRC2012_ID 1-1000 per line"),
        (
            "1\n2\n3\n4\n5\n",
            "ILSVRC2012_validation_ground_truth.txt: the devkit's ground truth needs the devkit's meta.mat",
        ),
        ("1\n2\n", "ILSVRC2012_val_00000003.JPEG: no label: "),
    ],
)
def test_a_bad_devkit_ground_truth_is_one_line(val, tmp_path, labels, expect):
    root, path = _val_copy(val, tmp_path, labels, "ILSVRC2012_validation_ground_truth.txt")
    if "meta.mat" not in expect:
        shutil.copy(val / "devkit" / "data" / "meta.mat", tmp_path)
    with pytest.raises(DataError) as exc:
        read_imagenet_val(root, path, image_size=SIZE, log=None)
    assert expect in _one_line_error(exc)


def test_imagenet_val_file_errors_are_one_line(val, tmp_path):
    root, _ = _val_copy(val, tmp_path, VALID)
    with pytest.raises(DataError) as exc:
        read_imagenet_val(root, tmp_path / "missing.txt", image_size=SIZE)
    _one_line_error(exc, tmp_path / "missing.txt", "labels file not found")
    shutil.copy(root / VAL_NAMES[0], root / "extra_photo.jpg")  # not named as the devkit names them
    shutil.copy(val / "devkit" / "data" / "meta.mat", tmp_path)
    (tmp_path / "truth.txt").write_text("1\n2\n3\n4\n5\n")
    with pytest.raises(DataError) as exc:
        read_imagenet_val(root, tmp_path / "truth.txt", image_size=SIZE)
    assert _one_line_error(exc).startswith(f"{root / 'extra_photo.jpg'}: no label: the devkit's ground truth")
    bad_meta = tmp_path / "bad" / "meta.mat"
    bad_meta.parent.mkdir()
    scipy.io.savemat(bad_meta, {"other": np.zeros(3)})
    (bad_meta.parent / "truth.txt").write_text("1\n")
    with pytest.raises(DataError) as exc:
        read_imagenet_val(root, bad_meta.parent / "truth.txt", image_size=SIZE)
    _one_line_error(exc, bad_meta, "not the ILSVRC2012 devkit's meta.mat")
    with pytest.raises(DataError) as exc:
        read_imagenet_val(tmp_path / "labels.txt", tmp_path / "labels.txt", image_size=SIZE)
    _one_line_error(exc, tmp_path / "labels.txt", "image folder is not a folder")


def test_imagenet_val_skips_bad_images(val, tmp_path):
    root, path = _val_copy(val, tmp_path, VALID)
    (root / VAL_NAMES[1]).write_bytes(b"")
    with pytest.raises(DataError) as exc:
        read_imagenet_val(root, path, image_size=SIZE, log=None)
    assert _one_line_error(exc).startswith(f"{root / VAL_NAMES[1]}: not a decodable image (cannot identify image file)")
    notices: list[str] = []
    ds = read_imagenet_val(root, path, image_size=SIZE, bad_images="skip", log=notices.append)
    assert list(ds["file"].values) == [VAL_NAMES[i] for i in (0, 2, 3, 4)]
    np.testing.assert_array_equal(ds["label"].values, [VAL_INDICES[i] for i in (0, 2, 3, 4)])
    assert ds.attrs["bad_images_skipped"] == 1 and len(notices) == 1


# ---------------------------------------------------------------- splits, files, the stage


def test_prepare_dataset_writes_an_empty_train_split_and_the_test_set(folder, tmp_path):
    train_path, test_path = prepare_dataset("imagefolder", tmp_path / "out", root=folder, image_size=SIZE, log=None)
    train, test = load_dataset(train_path), load_dataset(test_path)
    direct = read_image_folder(folder, image_size=SIZE, log=None)
    assert train.sizes["sample"] == 0 and train["image"].shape == (0, 3, SIZE, SIZE)
    assert list(train["class_name"].values) == list(test["class_name"].values) == ["cat", "cup", "scene"]
    assert train.attrs["split"] == "train" and train.attrs["dataset"] == "imagefolder"
    np.testing.assert_array_equal(test["image"].values, direct["image"].values)
    np.testing.assert_array_equal(test["label"].values, direct["label"].values)
    assert list(test["file"].values) == list(direct["file"].values)
    assert test.attrs["bad_images_skipped"] == 0 and test.attrs["source_root"] == str(folder)
    assert test["label"].dtype == np.int64 and test["image"].dtype == np.uint8


def test_dataset_splits_of_imagenet_val_default_to_224(val, tmp_path):
    train, test = dataset_splits(
        "imagenet-val", root=val / "val", labels_file=val / "val_indices.txt", max_images=1, seed=3, log=None
    )
    assert test["image"].shape == (1, 3, 224, 224) and train["image"].shape == (0, 3, 224, 224)
    assert test.attrs["resize_size"] == 256 and len(train["class_name"]) == 1000
    assert list(train["class_name"].values) == imagenet_categories()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("imagefolder", {}, "dataset.root: required for dataset.name imagefolder (the folder of class sub-folders)"),
        ("imagenet-val", {}, "dataset.root: required for dataset.name imagenet-val (the folder of validation images)"),
        ("imagenet-val", {"root": "x"}, "dataset.labels_file: required for dataset.name imagenet-val"),
        (
            "imagenet-val",
            {"root": "x", "labels_file": "y", "classes": "z"},
            "dataset.classes: read for dataset.name imagefolder only",
        ),
        (
            "imagefolder",
            {"root": "x", "labels_file": "y"},
            "dataset.labels_file: read for dataset.name imagenet-val only",
        ),
        (
            "digits",
            {"root": "x"},
            "dataset.root: a pre-staged copy is read for dataset.name cifar10 only, not 'digits'",
        ),
        ("mnist", {}, "dataset.name: unknown data set 'mnist'; allowed: digits, cifar10, imagefolder, imagenet-val"),
    ],
)
def test_dataset_splits_config_errors(name, options, message):
    with pytest.raises(ConfigError) as exc:
        dataset_splits(name, **options)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_prepare_stage_passes_the_dataset_keys(folder, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("scene\ncup\ncat\n")
    cfg = {
        "name": "imagefolder",
        "root": str(folder),
        "classes": str(classes),
        "labels_file": "",
        "image_size": SIZE,
        "resize_size": 40,
        "max_images": 4,
        "bad_images": "error",
        "test_fraction": 0.25,
        "seed": 1,
    }
    notices: list[str] = []
    job = SimpleNamespace(
        cfg={"dataset": cfg},
        inputs={"raw": []},
        output=lambda name: tmp_path / f"{name}.nc",
        log=SimpleNamespace(info=notices.append),
    )
    prepare_stage(job)  # type: ignore[arg-type]
    test = load_dataset(tmp_path / "test.nc")
    assert test.sizes["sample"] == 4 and test["image"].shape[2:] == (SIZE, SIZE)
    assert test.attrs["resize_size"] == 40 and list(test["class_name"].values) == ["scene", "cup", "cat"]
    assert load_dataset(tmp_path / "train.nc").sizes["sample"] == 0


def test_the_workflows_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from onepixel.data.folder_layout import IMAGE_EXTENSIONS

    assert tuple(IMG_EXTENSIONS) == IMAGE_EXTENSIONS
