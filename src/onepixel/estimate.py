"""How long a study's attack, vulnerability maps and locality analysis take on one GPU, estimated from FLOPs.

For every model of a validated config, :func:`forward_flops` counts the floating-point
operations of one forward pass of one image at the dataset's size with
``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products, a
multiply-add counted as 2 FLOPs (so ResNet-50 at 224x224 is 8.2 GFLOP, twice its
published 4.1 GMACs); elementwise operations, pooling, normalisation and the model's
input resize are not counted. The model is built with fresh weights and nothing is
downloaded: torchvision models by name with ``weights=None`` (named weights only lend
their crop size, from torchvision's metadata), registry models with
:func:`onepixel.models.build_model`, factories and ``.pt2`` programs as the workflow
builds them.

Forward passes of each model (:class:`Passes`), all upper bounds:

- attack: ``rows x population x (generations + 1)``, as the engine counts its queries
  (``onepixel.attack.de``); rows are the attacked images (at most ``attack.num_images``,
  and at most ``dataset.max_images`` or the images of a folder data set), times
  ``classes - 1`` targeted. DE stops an image at its first success, so a study with
  successful attacks runs fewer. Other methods: :func:`queries_per_row`; the further
  attacks of ``attacks`` add theirs.
- vulnerability maps: ``min(vulnerability.max_attacks, rows) x ceil(H / s) x ceil(W / s)``
  positions, ``s`` = ``vulnerability.stride`` (fewer within a ``vulnerability.window``;
  :func:`map_positions`).
- locality: for every row (as if every attack succeeded; only successful ones are
  analysed), each ring position up to ``locality.max_distance``, ``locality.random_positions``
  and one clean image; once per pixel attack of the study.

Wall time = passes x FLOPs / (sustained FLOP/s x ratio), with ``ratio`` the attack
engine's throughput over the model's plain batched forward pass. Defaults:

- :data:`DEFAULT_TFLOPS` = 20 TFLOP/s sustained: about 30 % of an H100 SXM's 67 TFLOP/s
  dense FP32 peak. The attack runs in float32 with TF32 off and deterministic cuDNN
  algorithms (``onepixel.torch_utils.deterministic_torch``), so the tensor-core peaks
  (TF32 495, bf16 989 TFLOP/s dense) do not apply; batched FP32 inference of
  convolutional networks sustains a fraction of the FP32 peak. Pass your GPU's own figure.
- :data:`DEFAULT_RATIO` = 0.85: the lowest engine/forward ratio in
  ``benchmarks/RESULTS.md`` (0.85-0.99, measured on a CPU; the GPU ratio is not measured
  yet). The maps and the locality analysis batch their perturbed images the same way and
  get the same ratio.

Training, capture and propagation maps are not counted (the folder data sets train
nothing; capture makes two forward passes per attack and is bound by writing its cubes).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onepixel.config import PIXEL_METHODS, attack_names, with_attack
from onepixel.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a model is built, so the defaults below load without it
    from torch import nn

#: sustained FP32 throughput of the GPU, TFLOP/s (see the module docstring)
DEFAULT_TFLOPS = 20.0
#: attack candidates per second / plain forward images per second (benchmarks/RESULTS.md, CPU)
DEFAULT_RATIO = 0.85
#: what each data set's images are when the data set itself does not say: (channels, side, classes)
_FIXED_GEOMETRY = {"digits": (1, 8, 10), "cifar10": (3, 32, 10)}
STAGES = ("attack", "vulnerability", "locality")


@dataclass(frozen=True)
class Geometry:
    """A data set's test images: ``channels x size x size``, ``classes``; ``images`` when known without reading them."""

    channels: int
    size: int
    classes: int
    images: int | None = None


@dataclass(frozen=True)
class Passes:
    """Forward passes of one image each, per stage of one model (upper bounds)."""

    attack: int
    vulnerability: int
    locality: int

    def of(self, stage: str) -> int:
        return int(getattr(self, stage))

    @property
    def total(self) -> int:
        return sum(self.of(stage) for stage in STAGES)


@dataclass(frozen=True)
class ModelEstimate:
    """One model: its FLOPs per image, its forward passes and their seconds at ``flops_per_s`` (ratio included)."""

    model: str
    flops: int
    passes: Passes
    flops_per_s: float

    def seconds(self, stage: str) -> float:
        return self.passes.of(stage) * self.flops / self.flops_per_s

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds(stage) for stage in STAGES)


def check_positive(value: str | float, option: str) -> float:
    """``value`` as a finite number > 0, else a one-line :class:`ConfigError` naming ``option``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{option}: {value!r} is not a number; give a positive number such as 20") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{option}: {value!r} is out of range; must be a finite number > 0")
    return number


def forward_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one forward pass of one image of ``input_shape`` ``(C, H, W)`` (2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape))
    return int(counter.get_total_flops())


def _folder_classes(dataset: Mapping[str, Any]) -> int:
    if dataset.get("classes"):
        lines = Path(dataset["classes"]).read_text(encoding="utf-8").splitlines()
        return sum(1 for line in lines if line.strip())
    root = Path(dataset["root"])
    if not root.is_dir():
        raise ConfigError(
            f"dataset.root: not found: {root}; the estimate counts an image folder's classes from its sub-folders "
            "(or give dataset.classes)"
        )
    return sum(1 for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _folder_images(dataset: Mapping[str, Any]) -> int | None:
    from onepixel.data.folder_layout import image_folder_files

    if dataset["max_images"]:
        return int(dataset["max_images"])
    if not Path(dataset["root"]).is_dir():
        return None
    return len(image_folder_files({"root": dataset["root"]}))


def dataset_geometry(config: Mapping[str, Any]) -> Geometry:
    """The test images of the validated ``config``'s data set, without reading them (an image folder's classes excepted).

    A folder data set's side is ``dataset.image_size``, or for 0 what the models' weights
    expect (:func:`onepixel.data.stages.folder_sizes`, as the workflow prepares it), else 224.
    """
    from onepixel.data.images import DEFAULT_IMAGE_SIZE, IMAGENET_CLASSES
    from onepixel.data.stages import folder_sizes

    dataset = config["dataset"]
    name = dataset["name"]
    if name in _FIXED_GEOMETRY:
        return Geometry(*_FIXED_GEOMETRY[name])
    size = folder_sizes(config)["image_size"] or DEFAULT_IMAGE_SIZE
    classes = IMAGENET_CLASSES if name == "imagenet-val" else _folder_classes(dataset)
    return Geometry(3, size, classes, _folder_images(dataset))


def build_fresh_model(name: str, config: Mapping[str, Any], geometry: Geometry) -> nn.Module:
    """Model ``name`` of the config, with fresh weights (``weights`` and ``state_dict`` are left out)."""
    from onepixel.models import build_model, build_source_model
    from onepixel.models.sources import expected_image_sizes

    source = config["model_sources"].get(name)
    if source is None:
        return build_model(name, geometry.classes, geometry.channels, geometry.size)
    fresh = {key: value for key, value in source.items() if key not in ("weights", "state_dict")}
    # without its weights the model would run at the dataset's size, not at the weights' crop it resizes to
    fresh["input_size"] = expected_image_sizes([name], config["model_sources"]).get(name, (0, 0))[0]
    return build_source_model(name, fresh, geometry.classes, geometry.channels, geometry.size)


def attack_rows(config: Mapping[str, Any], geometry: Geometry) -> int:
    """Attacked rows of one model: images (at most the data set's), times ``classes - 1`` targeted."""
    images = int(config["attack"]["num_images"])
    if geometry.images is not None:
        images = min(images, geometry.images)
    return images * (geometry.classes - 1) if config["attack"]["targeted"] else images


def locality_positions(locality: Mapping[str, Any]) -> int:
    """Forward passes of the locality analysis per attack: ring positions, random positions, the clean image."""
    from onepixel.analysis.locality import ring_offsets

    rings = sum(len(ring_offsets(d, locality["rings"])) for d in range(1, int(locality["max_distance"]) + 1))
    return rings + int(locality["random_positions"]) + 1


def map_positions(size: int, stride: int = 1, window: int = 0) -> int:
    """Positions a vulnerability map evaluates per attack on ``size x size`` images, at most.

    The offsets from the attacked pixel that are multiples of ``stride`` (per axis at most
    ``ceil(size / stride)``, exactly that when ``stride`` divides ``size``), and within
    ``window`` pixels of it when ``window`` > 0 (``2 * (window // stride) + 1`` per axis).
    """
    axis = math.ceil(size / stride)
    if window:
        axis = min(axis, 2 * (window // stride) + 1)
    return axis * axis


def queries_per_row(attack: Mapping[str, Any], geometry: Geometry) -> int:
    """Forward passes per attacked row of ``attack.method`` (upper bounds; one forward + backward counts 3).

    de: population x (generations + 1); exhaustive: every position x its colours (2^C corners,
    levels^C on a grid, 256 for all); fgsm: 3; pgd: 3 x steps.
    """
    method = attack.get("method", "de")
    if method == "exhaustive":
        colours = {"corners": 2**geometry.channels, "grid": int(attack["levels"]) ** geometry.channels, "all": 256}
        return geometry.size * geometry.size * colours[attack["colors"]]
    if method in ("fgsm", "pgd"):
        return 3 * (1 if method == "fgsm" else int(attack["steps"]))
    return int(attack["population"]) * (int(attack["generations"]) + 1)


def study_attacks(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``attack`` section of each of the study's attacks: the main one, then those of ``attacks``."""
    return [with_attack(config, name)["attack"] for name in attack_names(config)]


def stage_passes(config: Mapping[str, Any], geometry: Geometry) -> Passes:
    """Forward passes of the attacks, vulnerability maps and locality of one model (upper bounds).

    Every attack of the study counts (the main one and those of ``attacks``), and the locality
    analysis of each pixel attack; the vulnerability maps are the main attack's.
    """
    maps, rows = config["vulnerability"], attack_rows(config, geometry)
    attacks = study_attacks(config)
    positions = map_positions(geometry.size, int(maps["stride"]), int(maps["window"]))
    return Passes(
        attack=rows * sum(queries_per_row(attack, geometry) for attack in attacks),
        vulnerability=min(int(maps["max_attacks"]), rows) * positions,
        locality=rows * locality_positions(config["locality"]) * sum(a["method"] in PIXEL_METHODS for a in attacks),
    )


def estimate_study(
    config: Mapping[str, Any], tflops: float = DEFAULT_TFLOPS, ratio: float = DEFAULT_RATIO
) -> list[ModelEstimate]:
    """The estimate of every model of the validated ``config``, in config order."""
    geometry = dataset_geometry(config)
    flops_per_s = check_positive(tflops, "--tflops") * 1e12 * check_positive(ratio, "--ratio")
    passes = stage_passes(config, geometry)
    shape = (geometry.channels, geometry.size, geometry.size)
    return [
        ModelEstimate(name, forward_flops(build_fresh_model(name, config, geometry), shape), passes, flops_per_s)
        for name in config["models"]
    ]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h"


#: the table's columns after the model's name
HEADER = ("GFLOP/image", *(f"{stage} passes" for stage in STAGES), *(f"{stage} h" for stage in STAGES), "total h")


def _columns(first: str, width: int, *cells: str) -> str:
    return f"{first:{width}s}" + "".join(
        f" {cell:>{max(len(head), 9)}s}" for cell, head in zip(cells, HEADER, strict=True)
    )


def estimate_lines(config: Mapping[str, Any], estimates: list[ModelEstimate], tflops: float, ratio: float) -> list[str]:
    """The table of :func:`estimate_study`: a header, one line per model, a total, then the assumptions."""
    geometry = dataset_geometry(config)
    attack = config["attack"]
    width = max(len("model"), *(len(e.model) for e in estimates)) + 2
    lines = [_columns("model", width, *HEADER)]
    for e in estimates:
        passes = (f"{e.passes.of(stage):,d}" for stage in STAGES)
        hours = (_hours(e.seconds(stage)) for stage in STAGES)
        lines.append(_columns(e.model, width, f"{e.flops / 1e9:.4g}", *passes, *hours, _hours(e.total_seconds)))
    hours = (_hours(sum(e.seconds(stage) for e in estimates)) for stage in STAGES)
    petaflop = sum(e.flops * e.passes.total for e in estimates) / 1e15
    total = _columns("total", width, "", *("" for _ in STAGES), *hours, _hours(sum(e.total_seconds for e in estimates)))
    kind = "targeted" if attack["targeted"] else "untargeted"
    return [
        *lines,
        f"{total}  ({petaflop:,.1f} PFLOP)",
        f"images {geometry.channels}x{geometry.size}x{geometry.size}, {geometry.classes} classes; "
        f"{attack_rows(config, geometry):,d} {kind} attack rows per model x "
        + " + ".join(f"{queries_per_row(a, geometry):,d} ({a.get('method', 'de')})" for a in study_attacks(config))
        + " forward passes",
        f"assumes {tflops:g} TFLOP/s sustained on one GPU (default {DEFAULT_TFLOPS:g}: about 30 % of an H100 SXM's "
        "67 TFLOP/s dense FP32 peak; the attack runs in FP32 with TF32 off) and an attack/forward throughput ratio "
        f"of {ratio:g} (default {DEFAULT_RATIO:g}: the lowest in benchmarks/RESULTS.md, measured on a CPU)",
        "upper bounds: every attack runs all its generations (DE stops at a success) and every attack is analysed "
        "by locality (only successful ones are); training, capture and propagation are not counted",
    ]
