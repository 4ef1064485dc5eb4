"""Capturing intermediate feature maps of clean and adversarial images.

The propagation maps of Vargas & Su (arXiv 1902.02947) compare, layer by layer,
the feature maps ``F_l(x)`` of a clean image with ``F_l(x_adv)`` of its one-pixel
adversarial version. This module records those feature maps with forward hooks
and stores them as one netCDF "cube" per layer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onepixel.errors import ConfigError
from onepixel.utils import provenance, resolve_device, write_json, write_netcdf

log = logging.getLogger(__name__)

#: Largest amount of activations (clean + adversarial, bytes) held in memory at once
#: by :func:`run_capture_stage`; layers are captured in groups that fit.
MEMORY_BUDGET = 512 * 2**20
#: zlib level of the cube files, with the byte-shuffle filter. Measured on 32x32
#: conv/block outputs: level 1 gives 72-84 % of the raw size, level 4 only 1-2 %
#: less at a similar speed, level 9 3 % less but ten times slower.
COMPLEVEL = 1


def feature_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers to capture by default.

    ``model.feature_layers`` (conv/block outputs in depth order, set by the
    models of :mod:`onepixel.models`) when present, else every ``nn.Conv2d``.
    """
    names = getattr(model, "feature_layers", None)
    if names:
        return list(names)
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def _resolve_modules(model: nn.Module, layers: list[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules or name == ""]
    if unknown:
        valid = feature_layer_names(model) or [name for name in modules if name]
        shown = ", ".join(valid[:8]) + (", ..." if len(valid) > 8 else "")
        raise ConfigError(f"capture.layers: unknown layer(s) {', '.join(map(repr, unknown))}; valid names include {shown}")
    if not layers:
        raise ConfigError("capture.layers: no layers to capture (the model has no feature layers or Conv2d modules)")
    return {name: modules[name] for name in layers}


def capture_activations(
    model: nn.Module,
    images: torch.Tensor,
    layers: list[str],
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Feature maps of ``layers`` for ``images``, as float32 ``(N, C, H, W)`` arrays.

    Each hook stores a *copy* of the module output, so in-place operations later in
    the network (e.g. ``ReLU(inplace=True)`` on a conv output) cannot alter what is
    recorded. If a module runs several times per forward pass, its last output is
    kept. The model is used as given (put it in eval mode first).

    Args:
        model: network taking float images in [0, 1].
        images: ``(N, C, H, W)`` float tensor in [0, 1].
        layers: module names (``model.named_modules()``).
        batch_size: images per forward pass.
        device: where to run; default: the device of the model's parameters.

    Raises:
        ConfigError: unknown layer name, or a layer whose output is not a 4-D tensor.
    """
    modules = _resolve_modules(model, layers)
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    current: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ConfigError(
                    f"capture.layers: layer {name!r} outputs {shape}, not a (N, C, H, W) feature map; "
                    "choose conv/block outputs"
                )
            current[name] = output.detach().to("cpu", dtype=torch.float32, copy=True)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                current.clear()
                model(images[start : start + batch_size].to(device, dtype=torch.float32))
                for name in layers:
                    if name not in current:
                        raise ConfigError(f"capture.layers: layer {name!r} is not used in the model's forward pass")
                    collected[name].append(current[name])
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).numpy() if parts else np.zeros((0, 0, 0, 0), np.float32) for name, parts in collected.items()}


def _depth_order(model: nn.Module, probe: torch.Tensor, layers: list[str], device: torch.device) -> list[tuple[str, tuple[int, ...]]]:
    """``(name, (C, H, W))`` of ``layers`` sorted by when they run in a forward pass of ``probe``."""
    modules = _resolve_modules(model, layers)
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name) if name not in order else None)
        for name, module in modules.items()
    ]
    try:
        with torch.no_grad():
            model(probe.to(device))
    finally:
        for handle in handles:
            handle.remove()
    shapes = capture_activations(model, probe, layers, device=device)
    return [(name, tuple(shapes[name].shape[1:])) for name in order]


def _layer_groups(shapes: list[tuple[str, tuple[int, ...]]], n: int, budget: int) -> list[list[int]]:
    """Split layer indices into consecutive groups whose activations (x2, float32) fit ``budget``."""
    groups: list[list[int]] = [[]]
    used = 0
    for index, (_name, shape) in enumerate(shapes):
        size = 2 * 4 * n * int(np.prod(shape))
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(index)
        used += size
    return groups


def _cube_dataset(name: str, index: int, clean: np.ndarray, adversarial: np.ndarray, attack, input_hw: tuple[int, int]):
    """The netCDF dataset of one layer (see :func:`run_capture_stage`)."""
    import xarray as xr

    height, width = input_hw
    h_l, w_l = clean.shape[2:]
    px = attack["pixel_x"].values[:, 0].astype(np.int64)
    py = attack["pixel_y"].values[:, 0].astype(np.int64)
    dims = ("sample", "channel", "y", "x")
    coords = {
        "sample_id": ("sample", attack["sample_id"].values.astype(np.int64)),
        "true_class": ("sample", attack["true_class"].values.astype(np.int64)),
        "adv_class": ("sample", attack["adv_class"].values.astype(np.int64)),
        "success": ("sample", attack["success"].values.astype(bool)),
        "pixel_x": ("sample", px, {"long_name": "column of the (first) attacked pixel in the input image"}),
        "pixel_y": ("sample", py, {"long_name": "row of the (first) attacked pixel in the input image"}),
        "pixel_x_layer": ("sample", px * w_l // width, {"long_name": "attacked pixel's column in this layer's grid, floor(x * W_l / W)"}),
        "pixel_y_layer": ("sample", py * h_l // height, {"long_name": "attacked pixel's row in this layer's grid, floor(y * H_l / H)"}),
    }
    data_vars = {
        "clean": (dims, clean, {"long_name": f"feature maps of layer {name} for the clean image", "units": "1"}),
        "adversarial": (dims, adversarial, {"long_name": f"feature maps of layer {name} for the adversarial image", "units": "1"}),
    }
    attrs = {
        "layer": name,
        "layer_index": index,
        "input_size": np.array([height, width], dtype=np.int64),
        "stride": height / h_l,
        "description": "activations F_l(x) and F_l(x_adv) for propagation maps (Vargas & Su, arXiv 1902.02947)",
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def run_capture_stage(
    checkpoint_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    attack_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    layers: list[str] | None = None,
    batch_size: int = 64,
    device: str = "auto",
) -> list[Path]:
    """Capture clean and adversarial feature maps of every attacked image, one file per layer.

    The clean images are the test images at the attack file's ``sample_id``; the
    adversarial ones are its ``adversarial`` variable. Writes
    ``out_dir/{index:02d}_{layer}.nc`` (variables ``clean`` and ``adversarial``,
    float32 ``(sample, channel, y, x)``, zlib-compressed, one chunk per sample) in
    depth order, each as soon as it is captured, then ``out_dir/layers.json``.

    Args:
        layers: module names; ``None`` or empty: the model's feature layers.

    Returns:
        The layer files, in depth order.
    """
    from onepixel.attack import load_attack
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    if batch_size < 1:
        raise ConfigError(f"capture.batch_size: {batch_size} must be >= 1")
    dev = resolve_device(device)
    attack = load_attack(attack_path)
    test = load_dataset(test_path)
    model, _meta = load_checkpoint(checkpoint_path, map_location=dev)
    names = list(layers) if layers else feature_layer_names(model)
    clean_u8 = test["image"].values[attack["sample_id"].values]
    clean = torch.from_numpy(clean_u8).float() / 255
    adversarial = torch.from_numpy(attack["adversarial"].values).float() / 255
    shapes = _depth_order(model, clean[:1] if len(clean) else torch.zeros(1, *clean.shape[1:]), names, dev)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    entries = []
    for group in _layer_groups(shapes, len(clean), MEMORY_BUDGET):
        group_names = [shapes[i][0] for i in group]
        acts_clean = capture_activations(model, clean, group_names, batch_size, dev)
        acts_adv = capture_activations(model, adversarial, group_names, batch_size, dev)
        for index in group:
            name, shape = shapes[index]
            ds = _cube_dataset(name, index, acts_clean.pop(name).reshape(-1, *shape),
                               acts_adv.pop(name).reshape(-1, *shape), attack, tuple(clean.shape[2:]))
            ds.attrs.update(provenance(dev))
            enc = {"zlib": True, "shuffle": True, "complevel": COMPLEVEL, "chunksizes": (1, *shape)} if len(clean) else {}
            path = out / f"{index:02d}_{name}.nc"
            write_netcdf(ds, path, encoding={"clean": enc, "adversarial": enc})
            log.info("captured layer %s %s for %d images -> %s", name, shape, len(clean), path)
            files.append(path)
            entries.append({"index": index, "layer": name, "file": path.name, "shape": list(shape)})
    write_json({"layers": entries}, out / "layers.json")
    return files
