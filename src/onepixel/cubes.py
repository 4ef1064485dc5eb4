"""Per-layer activation cubes on disk: one netCDF file per (model, layer).

Every layer file holds, per attacked sample, the raw propagation maps computed
during capture (:data:`MAP_VARIABLES`: ``pm_max``, ``pm_avg`` float32
``(sample, y, x)`` and ``scale`` ``(sample,)``), the per-sample coordinates
(``sample_id``, ``success``, the attacked pixel in the input and the layer grid...)
and the layer's metadata as global attributes (``layer``, ``layer_index``,
``layer_shape``, ``stride``, ``receptive_field``, ``store``, ``cube_dtype``, the
lineage and provenance of the capture).

What else it holds is ``capture.store`` (:data:`STORES`, global attribute ``store``):

- ``maps`` (the default): nothing else; a small fraction of the cubes' size,
  all that the propagation stage reads.
- ``cubes``: also the full feature maps ``F_l(x)`` of the clean image
  (``clean``) and their change under the one-pixel attack ``F_l(x_adv) - F_l(x)``
  (``delta``), ``(sample, channel, y, x)`` of ``capture.cube_dtype``
  (:data:`CUBE_DTYPES`: float32, or float16 for half the size, refused with a
  :class:`~onepixel.errors.DataError` where a value exceeds float16's range).
  netCDF has no float16 type: float16 cubes are stored as their IEEE bit
  patterns in ``uint16`` variables marked with the attribute
  ``stored_as`` = :data:`FLOAT16_BITS`; :func:`decode_cubes` (and so
  :func:`open_cubes`) gives them back as float16, other tools need
  ``values.view("float16")``.
  Storing the change instead of ``F_l(x_adv)`` makes the files smaller (the
  change is zero outside the attacked pixel's receptive field in early layers)
  and gives propagation maps directly; ``adversarial = clean + delta`` (up to
  the rounding of the sum).

Files are written incrementally by :class:`CubeWriter` (a batch of samples at a
time, so memory does not grow with the number of samples), the cubes one chunk
per sample, compressed with the codec chosen by measurement
(``benchmarks/capture_throughput.py``, results in ``benchmarks/RESULTS.md``), under a
temporary name renamed on success. :func:`estimate_capture_bytes` predicts their
size before a capture.
:func:`open_cubes` opens all layers of a model lazily as one dataset with
``xarray.open_mfdataset`` (files of either store).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
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
#: Size of the stored cubes over their raw bytes, for :func:`estimate_capture_bytes`: a conservative
#: round-up of the measured 0.44 (zstd) and 0.45 (zlib) on float32 ResNet-20 cubes.
COMPRESSION_RATIOS = {"zstd": 0.5, "zlib": 0.5, "none": 1.0}
CUBE_VARIABLES = ("clean", "delta")
#: ``capture.store``: what a layer file holds besides the raw maps and coordinates.
STORES = ("maps", "cubes")
DEFAULT_STORE = "maps"
#: ``capture.cube_dtype``: the dtype of stored ``clean``/``delta`` (the maps are float32 either way).
CUBE_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}
DEFAULT_CUBE_DTYPE = "float32"
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504
#: The ``stored_as`` attribute of a float16 cube variable (netCDF has no float16 type).
FLOAT16_BITS = "IEEE float16 bit patterns in uint16 (netCDF has no float16): view as float16"
#: Raw propagation maps of every layer file, whatever the store (computed on the device from the
#: float32 feature maps during capture: the propagation stage reads these, never the cubes).
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


def check_store(store: str, cube_dtype: str) -> None:
    """ConfigError if ``store`` is not one of :data:`STORES` or ``cube_dtype`` not a key of :data:`CUBE_DTYPES`."""
    if store not in STORES:
        raise ConfigError(f"capture.store: {store!r} is not one of {', '.join(STORES)}")
    if cube_dtype not in CUBE_DTYPES:
        raise ConfigError(f"capture.cube_dtype: {cube_dtype!r} is not one of {', '.join(CUBE_DTYPES)}")


def check_cube_range(layer: str, name: str, max_abs: float, cube_dtype: str) -> None:
    """DataError (one line) if a ``max_abs`` of variable ``name`` cannot be stored as ``cube_dtype``.

    float16 tops out at 65504: larger values would be stored as inf, so they are refused
    rather than clipped (float32 keeps them).
    """
    if cube_dtype == "float16" and max_abs > FLOAT16_MAX:  # NaN passes: it is stored as NaN
        raise DataError(
            f"capture: layer {layer}: {name} reaches |value| {max_abs:.6g}, beyond float16's {FLOAT16_MAX:.0f}; "
            "set capture.cube_dtype: float32"
        )


def to_cube_dtype(layer: str, name: str, values: np.ndarray, cube_dtype: str) -> np.ndarray:
    """``values`` as ``cube_dtype`` (no copy when they already are), checked by :func:`check_cube_range`."""
    dtype = CUBE_DTYPES[cube_dtype]
    if values.dtype == dtype:
        return values
    if values.size:
        check_cube_range(layer, name, float(np.nanmax(np.abs(values), initial=0.0)), cube_dtype)
    return values.astype(dtype)


#: Bytes per sample of the per-sample coordinates (8 of at most 8 bytes) and, per layer file, of
#: the netCDF/HDF5 metadata and attributes (measured: 21 KiB with maps only, up to 30 KiB with cubes).
_COORD_BYTES = 8 * 8
_FILE_OVERHEAD = 32 * 1024


def estimate_capture_bytes(
    layer_shapes: Iterable[tuple[int, int, int]],
    n_samples: int,
    store: str = DEFAULT_STORE,
    cube_dtype: str = DEFAULT_CUBE_DTYPE,
    compression: str = DEFAULT_COMPRESSION,
) -> int:
    """Expected bytes on disk of the layer files of one capture.

    Per layer of shape ``(C, H, W)``: ``n_samples`` x (the float32 maps ``2 H W 4 + 4``,
    the coordinates, and with ``store="cubes"`` the ``clean`` and ``delta`` cubes,
    ``2 C H W`` values of ``cube_dtype`` times :data:`COMPRESSION_RATIOS` of
    ``compression``), plus a fixed overhead per file.
    """
    check_store(store, cube_dtype)
    check_compression(compression)
    value_bytes = np.dtype(CUBE_DTYPES[cube_dtype]).itemsize
    total = 0.0
    for channels, height, width in layer_shapes:
        per_sample: float = 2 * height * width * 4 + 4 + _COORD_BYTES
        if store == "cubes":
            per_sample += 2 * channels * height * width * value_bytes * COMPRESSION_RATIOS[compression]
        total += n_samples * per_sample + _FILE_OVERHEAD
    return int(np.ceil(total))


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
        attrs: global attributes (layer metadata, provenance); ``layer_shape``
            (``shape``), ``store`` and ``cube_dtype`` are added.
        compression: a key of :data:`COMPRESSIONS`.
        store: ``"cubes"`` (``clean`` and ``delta`` beside the maps) or ``"maps"``
            (the maps only; the capture stage's default, ``capture.store``).
        cube_dtype: a key of :data:`CUBE_DTYPES`, the dtype of ``clean`` and ``delta``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: tuple[int, int, int],
        coords: dict[str, np.ndarray],
        attrs: dict[str, Any],
        compression: str = DEFAULT_COMPRESSION,
        store: str = "cubes",
        cube_dtype: str = DEFAULT_CUBE_DTYPE,
    ) -> None:
        check_store(store, cube_dtype)
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.coords = coords
        self.store, self.cube_dtype = store, cube_dtype
        self.attrs = {**attrs, "layer_shape": np.array(self.shape, np.int64), "store": store, "cube_dtype": cube_dtype}
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
            if dim != "channel" or self.store == "cubes":
                nc.createDimension(dim, size)
        layer = self.attrs.get("layer", "?")
        coordinates = " ".join(self.coords)
        if self.store == "cubes":
            self._create_cubes(layer, coordinates)
        for name, (dims, description) in MAP_VARIABLES.items():
            var = nc.createVariable(name, "f4", dims, contiguous=True)  # small; written in place batch by batch
            var.setncatts({"long_name": f"{description}, layer {layer}", "units": "1", "coordinates": coordinates})

    def _create_cubes(self, layer: object, coordinates: str) -> None:
        chunks = (1, *self.shape) if self.n_samples else None
        descriptions = {
            "clean": f"feature maps F_l(x) of layer {layer} for the clean image",
            "delta": f"change F_l(x_adv) - F_l(x) of layer {layer}'s feature maps under the one-pixel attack",
        }
        half = self.cube_dtype == "float16"
        extra = {"stored_as": FLOAT16_BITS} if half else {}
        for name in CUBE_VARIABLES:
            var = self._nc.createVariable(
                name,
                "u2" if half else "f4",
                ("sample", "channel", "y", "x"),
                chunksizes=chunks,
                fill_value=False if half else None,  # every value is written; 0xFFFF is a float16 NaN
                **self.filters,
            )
            # No chunk cache: every (whole-chunk) write is compressed and written at once, in the
            # writer thread, instead of piling up in the cache until close.
            var.set_var_chunk_cache(size=1, nelems=1, preemption=1.0)  # 1 byte: size=0 means the default
            var.setncatts({"long_name": descriptions[name], "units": "1", "coordinates": coordinates, **extra})

    def write(
        self, start: int, clean: np.ndarray | None, delta: np.ndarray | None, maps: dict[str, np.ndarray]
    ) -> None:
        """Store samples ``start .. start + n - 1``.

        Args:
            clean, delta: ``(n, C, H, W)`` arrays, float32 or already ``cube_dtype``
                (cast here, refused by :func:`to_cube_dtype` where out of range);
                ignored, and may be ``None``, with ``store="maps"``.
            maps: the float32 :data:`MAP_VARIABLES` of these samples (``(n, H, W)`` and ``(n,)``).
        """
        stop = start + len(maps["scale"])
        if self.store == "cubes":
            self._write_cubes(start, stop, clean, delta)
        for name in MAP_VARIABLES:
            self._nc[name][start:stop] = maps[name]
            self.bytes_written += maps[name].nbytes

    def _write_cubes(self, start: int, stop: int, clean: np.ndarray | None, delta: np.ndarray | None) -> None:
        if clean is None or delta is None or clean.shape != delta.shape or clean.shape != (stop - start, *self.shape):
            shapes = [None if a is None else a.shape for a in (clean, delta)]
            raise ValueError(f"{self.path.name}: expected two ({stop - start}, {self.shape}) arrays, got {shapes}")
        layer = str(self.attrs.get("layer", self.path.stem))
        for name, values in (("clean", clean), ("delta", delta)):
            stored = to_cube_dtype(layer, name, values, self.cube_dtype)
            self._nc[name][start:stop] = stored.view(np.uint16) if stored.dtype == np.float16 else stored
            self.bytes_written += stored.nbytes

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


def decode_cubes(ds: Any) -> Any:
    """``ds`` with its float16 cubes (``stored_as`` = :data:`FLOAT16_BITS`) as float16 values.

    Lazy for a dataset opened with dask chunks (as :func:`open_cubes` does); otherwise
    those variables are read. Other variables are returned as they are.
    """
    for name in CUBE_VARIABLES:
        if name in ds.variables and ds[name].attrs.get("stored_as") == FLOAT16_BITS:
            decoded = ds[name].copy(data=ds[name].data.view(np.float16))
            decoded.attrs.pop("stored_as")
            decoded.encoding.pop("dtype", None)  # the stored uint16: writing it back would cast, not view
            ds = ds.assign({name: decoded})
    return ds


def layer_namespace(ds: Any) -> Any:
    """Give one layer file's layer-specific names a suffix ``_{layer_index}``.

    Use as ``xarray.open_mfdataset(files, preprocess=layer_namespace)``: layers
    differ in shape, so their variables (``clean_3``, ``pm_max_3``), dimensions (``channel_3``,
    ``y_3``, ``x_3``) and layer-grid coordinates (``pixel_x_layer_3``) need
    distinct names to be merged into one dataset; the per-sample coordinates are
    shared. The layer's metadata (name, stride, receptive field) is copied from
    the file's attributes to its variables' attributes. Files of either store
    (``maps``: no ``clean``/``delta``) are handled; float16 cubes are decoded
    (:func:`decode_cubes`).
    """
    check_format(ds.attrs.get(FORMAT_KEY), "cube", ds.encoding.get("source", "cube"))
    ds = decode_cubes(ds)
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
    """Open every layer file of one model lazily (dask) as one ``xarray.Dataset``.

    Variables ``pm_max_{i}``, ``pm_avg_{i}`` ``(sample, y_{i}, x_{i})`` and ``scale_{i}``
    for layer ``i`` in depth order (see :func:`layer_namespace`), and for a capture
    with ``store: cubes`` also ``clean_{i}`` and ``delta_{i}``
    ``(sample, channel_{i}, y_{i}, x_{i})``; ``kwargs`` go to ``xarray.open_mfdataset``.
    Close the dataset when done.
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
