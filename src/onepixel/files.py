"""Files that are never seen half-written: atomic writes, JSON and netCDF readers and writers with one-line errors.

Every file is stamped with its format (:mod:`onepixel.formats`) and read only as that format."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onepixel.errors import DataError
from onepixel.formats import FORMAT_KEY, check_format, format_name
from onepixel.provenance import current_run, json_default, provenance


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and ``path`` is left untouched, so a partial file is never taken as complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(obj: dict[str, Any], path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    """Write the dict ``obj`` as indented JSON to ``path`` atomically, with ``"format": "onepixel-<kind>/<version>"``.

    Inside :func:`run_context`, a dict without a ``provenance`` key gets one.

    Returns:
        The dict as written (a new dict, with ``format`` and any added ``provenance``).
    """
    if not isinstance(obj, dict):
        raise TypeError(f"write_json writes a dict (a JSON object), not {type(obj).__name__}")
    obj = {FORMAT_KEY: format_name(kind), **{key: value for key, value in obj.items() if key != FORMAT_KEY}}
    if "provenance" not in obj and current_run() is not None:
        obj["provenance"] = provenance()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")
    return obj


def read_json(path: str | os.PathLike[str], *, kind: str) -> dict[str, Any]:
    """The JSON object of a file written by :func:`write_json` with ``kind``, without its ``format``
    (checked here, so what comes back is what was given to :func:`write_json`, plus any provenance).

    Raises:
        DataError: one line naming the file: not found, not readable JSON, not a
            JSON object, or without the format of ``kind`` (see
            :func:`onepixel.formats.check_format`).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    try:
        obj = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not a readable JSON file, truncated or corrupt? ({one_line(str(exc))})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{file}: holds a JSON {type(obj).__name__}, not an object; expected {format_name(kind)}")
    check_format(obj.pop(FORMAT_KEY, None), kind, file, field='"format" key')
    return obj


def write_netcdf(ds: Any, path: str | os.PathLike[str], *, kind: str, encoding: dict[str, Any] | None = None) -> None:
    """Write an ``xarray.Dataset`` to ``path`` atomically (netCDF4 engine), stamped with the global
    attribute ``format = "onepixel-<kind>/<version>"``.

    Inside :func:`run_context`, provenance attributes the dataset lacks are added.
    """
    attrs = {FORMAT_KEY: format_name(kind), **{key: value for key, value in ds.attrs.items() if key != FORMAT_KEY}}
    if current_run() is not None:
        attrs.update({key: value for key, value in provenance().items() if key not in attrs})
    ds = ds.copy(deep=False)
    ds.attrs = attrs
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)


def open_netcdf(path: str | os.PathLike[str], *, kind: str, required: tuple[str, ...] = ()) -> Any:
    """Load a netCDF file of ``kind`` (see :mod:`onepixel.formats`) fully into memory, strictly.

    ``required`` names variables that must be present. The ``format`` attribute is
    checked and dropped, so the dataset is the one given to :func:`write_netcdf`.

    Raises:
        DataError: one line naming the file: not found, not a readable netCDF file
            (truncated, corrupt, another format), not of the format of ``kind``
            (another kind, another version, no format), or missing a required
            variable (listing the variables it does hold).
    """
    import xarray as xr

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    try:
        with xr.open_dataset(file, engine="netcdf4") as ds:
            loaded = ds.load()
    except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for corrupt files
        detail = one_line(f"{exc.__class__.__name__}: {exc}")
        raise DataError(f"{file}: not a readable netCDF file, truncated or corrupt? ({detail})") from exc
    check_format(loaded.attrs.pop(FORMAT_KEY, None), kind, file)
    missing = [name for name in required if name not in loaded.variables]
    if missing:
        held = ", ".join(sorted(map(str, loaded.data_vars))) or "no data variables"
        raise DataError(
            f"{file}: missing variable(s) {', '.join(missing)} of a {format_name(kind)} file; the file holds {held}"
        )
    return loaded


def one_line(text: str, limit: int = 300) -> str:
    """``text`` with every run of whitespace (newlines included) made one space, cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
