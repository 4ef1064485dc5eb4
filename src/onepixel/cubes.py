"""Per-layer activation cubes on disk: one netCDF file per (model, layer).

A cube holds, for every attacked sample, the feature maps ``F_l(x)`` of the clean
image (``clean``) and their change under the one-pixel attack
``F_l(x_adv) - F_l(x)`` (``delta``), both float32 ``(sample, channel, y, x)``.
Storing the change instead of ``F_l(x_adv)`` makes the files smaller (the change
is zero outside the attacked pixel's receptive field in early layers) and gives
propagation maps directly; ``adversarial = clean + delta`` (up to float32
rounding of the sum).

Files are written incrementally by :class:`CubeWriter` (a batch of samples at a
time, so memory does not grow with the number of samples), one chunk per
sample, compressed with the codec chosen by measurement
(``benchmarks/capture_throughput.py``, results in ``benchmarks/RESULTS.md``), under a
temporary name renamed on success.
:func:`open_cubes` opens all layers of a model lazily as one dataset with
``xarray.open_mfdataset``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from onepixel.errors import ConfigError, DataError
from onepixel.files import atomic_path, read_json, write_json
from onepixel.formats import FORMAT_KEY, check_format, format_name

#: Codecs for the cube variables (netCDF4/HDF5 filters). Measured by
#: ``benchmarks/capture_throughput.py`` on ResNet-20 cubes of CIFAR-10 images (``benchmarks/RESULTS.md``): zstd
#: level 1 and zlib level 1 (with byte shuffle, 2 % smaller than without) give
#: the same size (about 0.4 of the raw float32), but zstd writes about 4x and
#: reads about 2.4x faster. zlib is readable by every netCDF tool; zstd needs
#: netCDF-C >= 4.9 with its filter plugins (the netCDF4 Python wheels have them).
#: (netCDF4-python applies the shuffle filter only with zlib.)
COMPRESSIONS: dict[str, dict[str, Any]] = {
    "zstd": {"compression": "zstd", "complevel": 1},
    "zlib": {"compression": "zlib", "complevel": 1, "shuffle": True},
    "none": {"compression": None},
}
DEFAULT_COMPRESSION = "zstd"
CUBE_VARIABLES = ("clean", "delta")
#: Raw propagation maps stored beside the cubes (computed on the device during
#: capture, so the propagation stage need not read the cubes back).
MAP_VARIABLES = {
    "pm_max": (("sample", "y", "x"), "raw PMmax: max over channels of |delta|"),
    "pm_avg": (("sample", "y", "x"), "raw PMavg: mean over channels of |delta|"),
    "scale": (("sample",), "max |clean| over (channel, y, x), the divisor of normalised maps"),
}
INDEX_FILE = "layers.json"

_SAMPLE_COORDS = {
    "sample_id": "index of the image in the test set",
    "true_class": "true class of the image",
    "adv_class": "class predicted for the adversarial image",
    "success": "whether the one-pixel attack succeeded",
    "pixel_x": "column of the (first) attacked pixel in the input image",
    "pixel_y": "row of the (first) attacked pixel in the input image",
    "pixel_x_layer": "attacked pixel's column in this layer's grid, floor(x * W_l / W)",
    "pixel_y_layer": "attacked pixel's row in this layer's grid, floor(y * H_l / H)",
}


def check_compression(compression: str) -> dict[str, Any]:
    """The netCDF4 filter settings of ``compression``; ConfigError if unknown."""
    if compression not in COMPRESSIONS:
        raise ConfigError(f"capture.compression: {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    return COMPRESSIONS[compression]


def sample_coords(attack: Any, layer_hw: tuple[int, int], input_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per-sample coordinates of a cube from an attack result dataset.

    Args:
        attack: dataset of :func:`onepixel.attack.load_attack` (``sample`` rows).
        layer_hw: ``(H_l, W_l)`` of the layer.
        input_hw: ``(H, W)`` of the input images.
    """
    px = attack["pixel_x"].values[:, 0].astype(np.int64)
    py = attack["pixel_y"].values[:, 0].astype(np.int64)
    return {
        "sample_id": attack["sample_id"].values.astype(np.int64),
        "true_class": attack["true_class"].values.astype(np.int64),
        "adv_class": attack["adv_class"].values.astype(np.int64),
        "success": attack["success"].values.astype(bool),
        "pixel_x": px,
        "pixel_y": py,
        "pixel_x_layer": px * layer_hw[1] // input_hw[1],
        "pixel_y_layer": py * layer_hw[0] // input_hw[0],
    }


class CubeWriter:
    """Write one layer cube a batch of samples at a time (a context manager).

    The file is created under a temporary name when the context is entered and
    renamed to ``path`` when it exits without error; on an error or interruption
    the temporary file is removed, so a partial cube never looks complete.

    Args:
        path: the ``.nc`` file to write.
        shape: ``(C, H, W)`` of the layer's feature maps.
        coords: per-sample coordinates (see :func:`sample_coords`), each ``(N,)``.
        attrs: global attributes (layer metadata, provenance).
        compression: a key of :data:`COMPRESSIONS`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, int, int],
        coords: dict[str, np.ndarray],
        attrs: dict[str, Any],
        compression: str = DEFAULT_COMPRESSION,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.coords = coords
        self.attrs = attrs
        self.filters = check_compression(compression)
        self.n_samples = len(next(iter(coords.values()))) if coords else 0
        self.bytes_written = 0
        self._atomic = atomic_path(self.path)
        self._nc: Any = None

    def __enter__(self) -> Self:
        import netCDF4

        tmp = self._atomic.__enter__()
        try:
            # netCDF4 directly: a file first written by xarray and reopened here writes ~10x slower
            self._nc = netCDF4.Dataset(tmp, "w", format="NETCDF4")
            self._nc.setncatts(
                {FORMAT_KEY: format_name("cube"), **{k: v for k, v in self.attrs.items() if k != FORMAT_KEY}}
            )
            self._create_coords()
            self._create_variables()
        except BaseException:
            self._close_nc()
            self._atomic.__exit__(*sys.exc_info())
            raise
        return self

    def _create_coords(self) -> None:
        self._nc.createDimension("sample", self.n_samples)
        for name, values in self.coords.items():
            values = np.asarray(values)
            attrs = {"long_name": _SAMPLE_COORDS.get(name, name)}
            if values.dtype == bool:  # netCDF has no bool: int8 marked as xarray marks it, so it reads back as bool
                values, attrs["dtype"] = values.astype(np.int8), "bool"
            var = self._nc.createVariable(name, values.dtype, ("sample",))
            var.setncatts(attrs)
            var[:] = values

    def _create_variables(self) -> None:
        nc = self._nc
        for dim, size in zip(("channel", "y", "x"), self.shape, strict=True):
            nc.createDimension(dim, size)
        chunks = (1, *self.shape) if self.n_samples else None
        layer = self.attrs.get("layer", "?")
        descriptions = {
            "clean": f"feature maps F_l(x) of layer {layer} for the clean image",
            "delta": f"change F_l(x_adv) - F_l(x) of layer {layer}'s feature maps under the one-pixel attack",
        }
        coordinates = " ".join(self.coords)
        for name in CUBE_VARIABLES:
            var = nc.createVariable(name, "f4", ("sample", "channel", "y", "x"), chunksizes=chunks, **self.filters)
            # No chunk cache: every (whole-chunk) write is compressed and written at once, in the
            # writer thread, instead of piling up in the cache until close.
            var.set_var_chunk_cache(size=1, nelems=1, preemption=1.0)  # 1 byte: size=0 means the default
            var.setncatts({"long_name": descriptions[name], "units": "1", "coordinates": coordinates})
        for name, (dims, description) in MAP_VARIABLES.items():
            var = nc.createVariable(name, "f4", dims, contiguous=True)  # small; written in place batch by batch
            var.setncatts({"long_name": f"{description}, layer {layer}", "units": "1", "coordinates": coordinates})

    def write(self, start: int, clean: np.ndarray, delta: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        """Store samples ``start .. start + len(clean) - 1``.

        Args:
            clean, delta: ``(n, C, H, W)`` float32 arrays.
            maps: the :data:`MAP_VARIABLES` of these samples (``(n, H, W)`` and ``(n,)``).
        """
        if clean.shape != delta.shape or clean.shape[1:] != self.shape:
            raise ValueError(
                f"{self.path.name}: expected (n, {self.shape}) arrays, got {clean.shape} and {delta.shape}"
            )
        stop = start + len(clean)
        self._nc["clean"][start:stop] = clean
        self._nc["delta"][start:stop] = delta
        for name in MAP_VARIABLES:
            self._nc[name][start:stop] = maps[name]
        self.bytes_written += clean.nbytes + delta.nbytes

    def _close_nc(self) -> None:
        if self._nc is not None and self._nc.isopen():
            self._nc.close()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._close_nc()
        except BaseException as close_error:  # e.g. HDF5 flushing to a full disk: remove the temporary file
            if exc is None:
                if self._atomic.__exit__(type(close_error), close_error, close_error.__traceback__):
                    return
                raise
        self._atomic.__exit__(exc_type, exc, tb)


def write_layer_index(
    out_dir: str | os.PathLike[str], entries: list[dict[str, Any]], lineage: dict[str, str] | None = None
) -> Path:
    """Write ``out_dir/layers.json`` (the last file of a capture: it marks the cubes complete), with the
    ``lineage`` keys (``model_sha256``, ``test_digest``, ``attack_digest``) beside ``layers``."""
    path = Path(out_dir) / INDEX_FILE
    write_json({**(lineage or {}), "layers": entries}, path, kind="layers")
    return path


def read_layer_index(cube_dir: str | os.PathLike[str]) -> list[Path]:
    """The layer files of ``cube_dir`` in depth order, from its ``layers.json``."""
    directory = Path(cube_dir)
    index = directory / INDEX_FILE
    if not index.is_file():
        raise DataError(f"{directory}: no {INDEX_FILE}; run the capture stage first")
    entries = read_json(index, kind="layers")
    try:
        files = [directory / entry["file"] for entry in entries["layers"]]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{index}: not a layer index written by the capture stage ({exc})") from exc
    if not files:
        raise DataError(f"{index}: lists no layers")
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise DataError(f"{index}: layer file(s) missing: {', '.join(missing)}")
    return files


def layer_namespace(ds: Any) -> Any:
    """Give one cube's layer-specific names a suffix ``_{layer_index}``.

    Use as ``xarray.open_mfdataset(files, preprocess=layer_namespace)``: layers
    differ in shape, so their variables (``clean_3``, ``pm_max_3``), dimensions (``channel_3``,
    ``y_3``, ``x_3``) and layer-grid coordinates (``pixel_x_layer_3``) need
    distinct names to be merged into one dataset; the per-sample coordinates are
    shared. The layer's metadata (name, stride, receptive field) is copied from
    the file's attributes to its variables' attributes.
    """
    check_format(ds.attrs.get(FORMAT_KEY), "cube", ds.encoding.get("source", "cube"))
    i = int(ds.attrs["layer_index"])
    layer_attrs = {
        key: ds.attrs[key]
        for key in ("layer", "layer_index", "stride", "receptive_field", "receptive_field_start")
        if key in ds.attrs
    }
    layer_names = (*CUBE_VARIABLES, *MAP_VARIABLES, "channel", "y", "x", "pixel_x_layer", "pixel_y_layer")
    names = {name: f"{name}_{i}" for name in layer_names if name in ds.variables or name in ds.dims}
    out = ds.rename(names)
    for name in (*CUBE_VARIABLES, *MAP_VARIABLES):
        if f"{name}_{i}" in out:
            out[f"{name}_{i}"].attrs.update(layer_attrs)
    return out


def open_cubes(cube_dir: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Open every layer cube of one model lazily (dask) as one ``xarray.Dataset``.

    Variables ``clean_{i}`` and ``delta_{i}`` ``(sample, channel_{i}, y_{i}, x_{i})``
    for layer ``i`` in depth order (see :func:`layer_namespace`); ``kwargs`` go to
    ``xarray.open_mfdataset``. Close the dataset when done.
    """
    import xarray as xr

    files = read_layer_index(cube_dir)
    options: dict[str, Any] = {
        "preprocess": layer_namespace,
        "combine": "by_coords",
        "engine": "netcdf4",
        "data_vars": "all",
        "coords": "minimal",
        "compat": "override",
        "join": "exact",
    }
    options.update(kwargs)
    return xr.open_mfdataset([str(file) for file in files], **options)
