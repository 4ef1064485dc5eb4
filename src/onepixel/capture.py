"""Capturing intermediate feature maps of clean and adversarial images.

The propagation maps of Vargas & Su (arXiv 1902.02947) compare, layer by layer,
the feature maps ``F_l(x)`` of a clean image with ``F_l(x_adv)`` of its one-pixel
adversarial version. :class:`FeatureExtractor` records them and
:func:`capture_stage` streams them, a batch at a time, into one netCDF file
per layer (:mod:`onepixel.cubes`): the raw propagation maps computed on the
device from the float32 feature maps and, with ``capture.store: cubes``, the
full ``clean`` and ``delta`` cubes (float32, or float16 with
``capture.cube_dtype: float16``). Before any file is made, the size of the
files is estimated (:func:`onepixel.cubes.estimate_capture_bytes`) and checked
against the free space of the output's file system (:func:`check_disk_space`).

A layer is named by its module name (``model.named_modules()``, recorded with a
forward hook) or, for outputs that are no module's (a functional ``F.relu``, a
residual ``add``), by its ``torch.fx`` node name as
``torchvision.models.feature_extraction.get_graph_node_names`` lists it. Either
way a *copy* of the output is taken the moment it is produced, so in-place
operations later in the network (``ReLU(inplace=True)``, ``x.add_``) cannot
alter what is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onepixel.attack.results import load_job_inputs
from onepixel.cubes import (
    CubeWriter,
    check_cube_range,
    check_store,
    estimate_capture_bytes,
    sample_coords,
    write_layer_index,
)
from onepixel.errors import ConfigError
from onepixel.memory import budgeted_batch
from onepixel.progress import Progress, announce, duration
from onepixel.provenance import provenance
from onepixel.stages import Job

log = logging.getLogger(__name__)


def feature_layer_names(model: nn.Module) -> list[str]:
    """Names of the layers to capture by default.

    ``model.feature_layers`` (conv/block outputs in depth order, set by the
    models of :mod:`onepixel.models`) when present, else every ``nn.Conv2d``.
    """
    names = getattr(model, "feature_layers", None)
    if names:
        return list(names)
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def _shown(names: list[str]) -> str:
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _check_4d(name: str, output: object) -> torch.Tensor:
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(
            f"capture.layers: layer {name!r} outputs {shape}, not a (N, C, H, W) feature map; choose conv/block outputs"
        )
    return output


class FeatureExtractor:
    """Feature maps of named layers: ``extractor(images) -> {layer: (N, C, H, W) tensor}``.

    The result is ordered by when the layers run in the forward pass (depth
    order); each tensor is a float32 copy on the model's device. The model is
    used as given (put it in eval mode first).

    Args:
        model: network taking float images in [0, 1].
        layers: module names, or ``torch.fx`` node names for outputs of
            functional operations (then the model must be traceable).

    Raises:
        ConfigError: an empty list, or a name that is neither a module nor a node.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        if not layers:
            raise ConfigError(
                "capture.layers: no layers to capture (the model has no feature layers or Conv2d modules)"
            )
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        modules = dict(model.named_modules())
        if all(name in modules and name for name in self.layers):
            self._run = self._hooks_runner({name: modules[name] for name in self.layers})
        else:
            self._run = self._fx_runner(model, self.layers)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return self._run(images)

    def _hooks_runner(self, modules: dict[str, nn.Module]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
            captured: dict[str, torch.Tensor] = {}

            def hook_for(name: str):
                def hook(_module: nn.Module, _inputs: object, output: object) -> None:
                    captured.pop(name, None)  # a module that runs twice: keep its last output, in its last position
                    captured[name] = _check_4d(name, output).detach().to(torch.float32, copy=True)

                return hook

            handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
            try:
                self.model(images)
            finally:
                for handle in handles:
                    handle.remove()
            unused = [name for name in self.layers if name not in captured]
            if unused:
                raise ConfigError(
                    f"capture.layers: layer(s) {', '.join(map(repr, unused))} not used in the model's forward pass"
                )
            return captured

        return run

    @staticmethod
    def _fx_runner(model: nn.Module, layers: list[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        graph_module, nodes = _trace_with_node_names(model, layers)
        unknown = [name for name in layers if _node_for(name, nodes) is None]
        if unknown:
            names = list(nodes.values())
            raise ConfigError(
                f"capture.layers: unknown layer(s) {', '.join(map(repr, unknown))}; valid names include "
                f"{_shown(feature_layer_names(model) or names)} (modules) and {_shown(names)} (torch.fx nodes)"
            )
        wanted: dict[Any, list[str]] = {}
        for name in layers:
            wanted.setdefault(_node_for(name, nodes), []).append(name)

        def run(images: torch.Tensor) -> dict[str, torch.Tensor]:
            return _run_recording(graph_module, wanted, images)

        return run


def _trace_with_node_names(model: nn.Module, layers: list[str]) -> tuple[Any, dict[Any, str]]:
    """The model's full ``torch.fx`` graph and its nodes' qualified names (``layer1.0.relu_1``).

    The names are those of ``torchvision.models.feature_extraction.get_graph_node_names``.
    Unlike ``create_feature_extractor``, the graph is not pruned: pruning drops
    in-place method calls whose result is unused (``x.mul_(2)``), which would
    change what later layers compute.
    """
    import math

    from torch import fx
    from torchvision.models.feature_extraction import NodePathTracer

    tracer = NodePathTracer(autowrap_modules=(math,))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # tracing errors come as many exception types
        raise ConfigError(
            f"capture.layers: {', '.join(layers)} are not all module names, and the model cannot be traced "
            f"with torch.fx to find other nodes ({exc.__class__.__name__}: {exc}); name modules instead"
        ) from exc
    return fx.GraphModule(tracer.root, graph), dict(tracer.node_to_qualname)


def _node_for(name: str, nodes: dict[Any, str]) -> Any:
    """The node named ``name``, or for a module traced through, the last node inside it."""
    exact = [node for node, qualname in nodes.items() if qualname == name]
    if exact:
        return exact[0]
    inside = [node for node, qualname in nodes.items() if qualname.startswith(name + ".")]
    return inside[-1] if inside else None


def _run_recording(graph_module: Any, wanted: dict[Any, list[str]], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run a traced graph node by node, copying the outputs of the ``wanted`` nodes (to their names) as they are made."""
    from torch import fx

    captured: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: Any) -> Any:
            out = super().run_node(node)
            for name in wanted.get(node, ()):
                captured[name] = _check_4d(name, out).detach().to(torch.float32, copy=True)
            return out

    Recorder(graph_module).run(images)
    return captured


def capture_activations(
    model: nn.Module,
    images: torch.Tensor,
    layers: list[str],
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> dict[str, np.ndarray]:
    """Feature maps of ``layers`` for ``images``, as float32 ``(N, C, H, W)`` arrays in memory.

    For many images use :func:`capture_stage`, which streams to disk.

    Args:
        model: network taking float images in [0, 1] (in eval mode).
        images: ``(N, C, H, W)`` float tensor in [0, 1].
        layers: module or ``torch.fx`` node names (see :class:`FeatureExtractor`).
        batch_size: images per forward pass.
        device: where to run; default: the device of the model's parameters.

    Raises:
        ConfigError: unknown layer name, or a layer whose output is not a 4-D tensor.
    """
    extractor = FeatureExtractor(model, layers)
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    parts: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    for start in range(0, len(images), batch_size):
        for name, value in extractor(images[start : start + batch_size].to(device, dtype=torch.float32)).items():
            parts[name].append(value.cpu().numpy())
    return {
        name: np.concatenate(chunks) if chunks else np.zeros((0, 0, 0, 0), np.float32) for name, chunks in parts.items()
    }


def raw_maps(clean: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw propagation maps of a batch, where the feature maps are (see :data:`onepixel.cubes.MAP_VARIABLES`).

    Args:
        clean: ``(n, C, H, W)`` feature maps ``F_l(x)``.
        delta: ``(n, C, H, W)`` ``F_l(x_adv) - F_l(x)``.

    Returns:
        float32 ``pm_max`` and ``pm_avg`` ``(n, H, W)`` (channel max and mean of
        ``|delta|``) and ``scale`` ``(n,)`` = ``max |clean|``.
    """
    diff = delta.abs()
    return {
        "pm_max": diff.amax(dim=1),
        "pm_avg": diff.mean(dim=1),
        "scale": clean.abs().amax(dim=(1, 2, 3)),
    }


def layer_geometry(
    model: nn.Module, extractor: FeatureExtractor, image_shape: tuple[int, int, int], device: torch.device
) -> list[dict[str, Any]]:
    """Depth-ordered ``{"layer", "shape", "stride", "receptive_field", "receptive_field_start"}`` of the extractor's layers.

    ``stride`` is the input height over the layer's height; the receptive field
    (side in input pixels, and the input coordinate of unit 0's centre) comes
    from :func:`onepixel.analysis.receptive_field.theoretical_receptive_fields`, or is -1
    (and ``None``) where the model's structure does not define one.
    """
    from onepixel.analysis.receptive_field import theoretical_receptive_fields

    probe = extractor(torch.zeros(1, *image_shape, device=device))
    try:
        fields = theoretical_receptive_fields(model, image_shape, list(probe))
    except ConfigError as exc:
        log.warning("no theoretical receptive fields (%s)", exc)
        fields = {}
    geometry = []
    for name, value in probe.items():
        field = fields.get(name)
        geometry.append(
            {
                "layer": name,
                "shape": tuple(int(s) for s in value.shape[1:]),
                "stride": image_shape[1] / value.shape[2],
                "receptive_field": int(field.size) if field else -1,
                "receptive_field_start": float(field.start) if field else None,
            }
        )
    return geometry


def _cube_attrs(entry: dict[str, Any], index: int, image_shape: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "Conventions": "CF-1.10",
        "title": f"activation cube of layer {entry['layer']}",
        "layer": entry["layer"],
        "layer_index": index,
        "input_size": np.array(image_shape[1:], dtype=np.int64),
        "stride": entry["stride"],
        "receptive_field": entry["receptive_field"],
        "receptive_field_start": np.nan if entry["receptive_field_start"] is None else entry["receptive_field_start"],
        "description": "raw propagation maps (pm_max, pm_avg, scale) and, with store cubes, F_l(x) (clean) and "
        "F_l(x_adv) - F_l(x) (delta) (Vargas & Su, arXiv 1902.02947)",
    }


def _nearest_existing(folder: Path) -> Path:
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_disk_space(folder: Path, needed: int, hint: str, free: int | None = None) -> None:
    """ConfigError (one line) if ``needed`` bytes do not fit on ``folder``'s file system.

    Args:
        folder: where the files will be written (need not exist yet: the nearest
            existing parent's file system is asked, with ``shutil.disk_usage``).
        needed: the bytes to be written.
        hint: what to change, ending the message.
        free: the free bytes, instead of asking the file system.
    """
    if free is None:
        free = shutil.disk_usage(_nearest_existing(folder)).free
    if needed > free:
        raise ConfigError(
            f"capture: the layer files need about {needed / 2**20:.1f} MiB, only {free / 2**20:.1f} MiB "
            f"free in {folder}; {hint}"
        )


def _check_capture_space(folder: Path, geometry: list[dict[str, Any]], n_samples: int, cfg: dict[str, Any]) -> int:
    """Log the expected size of the layer files and refuse a capture that cannot fit; the estimate in bytes."""
    store, cube_dtype, compression = cfg["store"], cfg["cube_dtype"], cfg["compression"]
    needed = estimate_capture_bytes([entry["shape"] for entry in geometry], n_samples, store, cube_dtype, compression)
    what = f"{len(geometry)} layers of {n_samples} images, store {store}" + (
        f" ({cube_dtype}, {compression})" if store == "cubes" else ""
    )
    log.info("capture: expect about %.1f MiB on disk in %s (%s)", needed / 2**20, folder, what)
    announce(f"capture: about {needed / 2**20:.1f} MiB expected on disk ({what})")
    check_disk_space(folder, needed, _space_hint(store, cube_dtype))
    return needed


def _space_hint(store: str, cube_dtype: str) -> str:
    hints = ["capture fewer layers (capture.layers)", "attack fewer images (attack.num_images)", "or free space there"]
    if store == "cubes":
        hints[:0] = ["set capture.store: maps (all that propagation needs)"] + (
            ["capture.cube_dtype: float16"] if cube_dtype == "float32" else []
        )
    return ", ".join(hints)


def _to_cube(layer: str, name: str, values: torch.Tensor, cube_dtype: str) -> np.ndarray:
    """A feature-map tensor as a CPU array of ``cube_dtype``, cast on the device (refused if out of range)."""
    if cube_dtype != "float32" and values.numel():
        check_cube_range(layer, name, float(values.abs().amax()), cube_dtype)
    return values.to(getattr(torch, cube_dtype)).cpu().numpy()


def _capture_batch(
    extractor: FeatureExtractor,
    clean_u8: np.ndarray,
    adversarial_u8: np.ndarray,
    geometry: list[dict[str, Any]],
    device: torch.device,
    store: str = "cubes",
    cube_dtype: str = "float32",
) -> list[tuple[np.ndarray | None, np.ndarray | None, dict]]:
    """Per layer ``(clean, delta, raw maps)`` of one batch, as CPU arrays; ``clean``, ``delta`` None for ``store="maps"``.

    The maps come from the float32 feature maps whatever ``cube_dtype`` the cubes are stored in.
    """
    clean = torch.from_numpy(clean_u8).to(device).float().div_(255)
    adversarial = torch.from_numpy(adversarial_u8).to(device).float().div_(255)
    acts_clean, acts_adv = extractor(clean), extractor(adversarial)
    out: list[tuple[np.ndarray | None, np.ndarray | None, dict]] = []
    for entry in geometry:
        layer = entry["layer"]
        clean_maps = acts_clean[layer]
        delta = acts_adv[layer] - clean_maps
        maps = {name: value.cpu().numpy() for name, value in raw_maps(clean_maps, delta).items()}
        if store == "cubes":
            out.append(
                (_to_cube(layer, "clean", clean_maps, cube_dtype), _to_cube(layer, "delta", delta, cube_dtype), maps)
            )
        else:
            out.append((None, None, maps))
    return out


def _write_batch(
    writers: list[CubeWriter], start: int, batch: list[tuple[np.ndarray | None, np.ndarray | None, dict]]
) -> None:
    for writer, (clean, delta, maps) in zip(writers, batch, strict=True):
        writer.write(start, clean, delta, maps)


def capture_stage(job: Job) -> list[Path]:
    """Capture clean feature maps and their change under the attack, for every attacked image.

    The clean images are the test images at the attack file's ``sample_id``; the
    adversarial ones are its ``adversarial`` variable. One pass over the samples,
    ``batch_size`` at a time (two forward passes per batch, every layer at
    once), appends to ``{out}/{index:02d}_{layer}.nc`` for every layer (see
    :mod:`onepixel.cubes`), so memory does not grow with the number of samples;
    ``{out}/layers.json`` is written last and marks the cubes complete.

    Config: ``capture.layers`` (module or torch.fx node names; empty: the model's
    feature layers), ``capture.batch_size``, ``capture.compression`` (a key of
    :data:`onepixel.cubes.COMPRESSIONS`), ``capture.store`` (``maps``: the raw
    propagation maps only; ``cubes``: also ``clean`` and ``delta``) and
    ``capture.cube_dtype`` (``float32`` or ``float16``, of the cubes); each file and
    ``layers.json`` entry records ``store`` and ``cube_dtype``.

    Before any file is made, the expected size of the files is announced and
    compared with the free space of the output's file system: a capture that
    cannot fit is refused with a one-line ConfigError. A float16 cube value beyond
    float16's range (65504) stops the capture with a one-line DataError (use float32).

    The checkpoint, test set and attack must belong together (see
    :func:`onepixel.attack.results.load_attacked_model`); every cube and ``layers.json``
    record what they were made from: ``model_sha256``, ``test_digest``, ``attack_digest``.

    Returns:
        The layer files, in depth order.
    """
    cfg = job.cfg["capture"]
    layers, batch_size, compression = cfg["layers"], cfg["batch_size"], cfg["compression"]
    store, cube_dtype = cfg["store"], cfg["cube_dtype"]
    check_store(store, cube_dtype)
    loaded = load_job_inputs(job, "capture")  # refuses inputs that do not belong together, before any work
    model, _meta, test, attack, dev = loaded
    lineage = loaded.lineage
    extractor = FeatureExtractor(model, list(layers) if layers else feature_layer_names(model))
    clean_u8 = test["image"].values[attack["sample_id"].values]
    adversarial_u8 = attack["adversarial"].values
    channels, height, width = (int(s) for s in clean_u8.shape[1:])
    image_shape = (channels, height, width)
    geometry = layer_geometry(model, extractor, image_shape, dev)

    out = job.output()
    _check_capture_space(out, geometry, len(clean_u8), cfg)
    # per image: the clean and adversarial feature maps of every layer and their difference, beside the forward pass
    captured = 3 * 4 * sum(math.prod(entry["shape"]) for entry in geometry)
    batch_size = budgeted_batch(
        model, image_shape, batch_size, job.cfg["batch_memory_mb"], "capture.batch_size", dev, captured
    )
    out.mkdir(parents=True, exist_ok=True)
    common = {**provenance(dev), **lineage}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        writers = [
            stack.enter_context(
                CubeWriter(
                    out / f"{i:02d}_{entry['layer']}.nc",
                    entry["shape"],
                    sample_coords(attack, entry["shape"][1:], image_shape[1:]),
                    {**_cube_attrs(entry, i, image_shape), **common},
                    compression,
                    store,
                    cube_dtype,
                )
            )
            for i, entry in enumerate(geometry)
        ]
        # One background thread compresses and writes batch k while batch k + 1 is computed
        # (netCDF4 releases the GIL); at most one batch waits, so memory stays bounded.
        model_name = Path(job.input("checkpoint")).stem
        progress = stack.enter_context(Progress(f"capture {model_name}", len(clean_u8), "images"))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cube-writer") as pool:
            pending = None
            for start in range(0, len(clean_u8), batch_size):
                batch = _capture_batch(
                    extractor,
                    clean_u8[start : start + batch_size],
                    adversarial_u8[start : start + batch_size],
                    geometry,
                    dev,
                    store,
                    cube_dtype,
                )
                if pending is not None:
                    pending.result()
                    progress.update(batch_size)  # the batch before this one is on disk
                pending = pool.submit(_write_batch, writers, start, batch)
            if pending is not None:
                pending.result()
                progress.update(len(clean_u8) - progress.n)
    seconds = time.perf_counter() - started
    written = sum(writer.bytes_written for writer in writers)
    on_disk = sum(writer.path.stat().st_size for writer in writers)
    log.info(
        "captured %d layers for %d images in %.1f s: %.1f MiB stored (%.1f MiB/s), %.1f MiB on disk (store %s, %s)",
        len(writers),
        len(clean_u8),
        seconds,
        written / 2**20,
        written / 2**20 / max(seconds, 1e-9),
        on_disk / 2**20,
        store,
        f"{cube_dtype}, {compression}" if store == "cubes" else "maps uncompressed",
    )
    entries = [
        {
            "index": i,
            "file": writer.path.name,
            **{k: (list(v) if k == "shape" else v) for k, v in entry.items()},
            "store": store,
            "cube_dtype": cube_dtype,
        }
        for i, (writer, entry) in enumerate(zip(writers, geometry, strict=True))
    ]
    write_layer_index(out, entries, lineage)
    announce(
        f"capture {model_name}: {len(writers)} layers of {len(clean_u8)} images, "
        f"{on_disk / 2**20:.1f} MiB on disk, {duration(seconds)}"
    )
    return [writer.path for writer in writers]
