"""Files that are never seen half-written: atomic writes, JSON and netCDF readers and writers with one-line errors."""

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


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Inside :func:`run_context`, a dict without a ``provenance`` key gets one.
    """
    if isinstance(obj, dict) and "provenance" not in obj and current_run() is not None:
        obj = {**obj, "provenance": provenance()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def write_netcdf(ds: Any, path: str | os.PathLike[str], encoding: dict[str, Any] | None = None) -> None:
    """Write an ``xarray.Dataset`` to ``path`` atomically (netCDF4 engine).

    Inside :func:`run_context`, provenance attributes the dataset lacks are added.
    """
    if current_run() is not None:
        missing = {key: value for key, value in provenance().items() if key not in ds.attrs}
        if missing:
            ds = ds.copy(deep=False)
            ds.attrs = {**ds.attrs, **missing}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)


def open_netcdf(path: str | os.PathLike[str], required: tuple[str, ...] = (), kind: str | None = None) -> Any:
    """Load a netCDF file fully into memory, with a clear error if it is missing or foreign.

    ``required`` names variables that must be present; ``kind`` (e.g. "an attack
    result") says in the error what the file was expected to be.

    Raises:
        DataError: one line naming the file: not found, not a readable netCDF file
            (truncated, corrupt, another format), or missing a required variable
            (listing the variables it does hold, e.g. a file of another stage).
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
    missing = [name for name in required if name not in loaded.variables]
    if missing:
        held = ", ".join(sorted(map(str, loaded.data_vars))) or "no data variables"
        expected = f"; expected {kind}" if kind else ""
        raise DataError(f"{file}: missing variable(s) {', '.join(missing)}{expected}; the file holds {held} "
                        "(is it the right kind of file, e.g. the output of another stage?)")
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


