"""Files that are never seen half-written: atomic writes, JSON and netCDF readers and writers with one-line errors.

Every file is stamped with its format (:mod:`onepixel.formats`) and read only as that format."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import resource
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onepixel.errors import DataError
from onepixel.formats import FORMAT_KEY, check_format, format_name
from onepixel.provenance import current_run, json_default, provenance


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, kept: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed
    and ``path`` is left untouched, so a partial file is never taken as complete.

    A failed write (an ``OSError`` such as ENOSPC, or the ``RuntimeError`` netCDF4
    and torch raise for one, e.g. ``NetCDF: HDF error``) becomes a one-line
    :class:`DataError` naming the file, the cause (see :func:`write_error`) and what
    was kept; ``kept`` names a file of progress saved elsewhere (say, a partial
    result), mentioned in that message when it exists.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise write_error(target, exc, kept=kept) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as exc:
        error = write_error(target, exc, tmp=tmp, kept=kept) if _is_write_failure(exc, target, tmp) else None
        _discard(tmp)
        if error is None:
            raise
        raise error from exc
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file, emptied first: a library that failed to close it (HDF5 after ENOSPC
    keeps its handle) would otherwise hold its space until the process ends."""
    with contextlib.suppress(OSError):
        os.truncate(tmp, 0)
    tmp.unlink(missing_ok=True)


#: errno values that mean the location cannot take the file (not: an input is missing)
_WRITE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.EIO,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)
#: how netCDF4/HDF5 and torch.save report a failed write (they hide the errno)
_HIDDEN_WRITE_ERROR = re.compile(
    r"HDF error|NetCDF: (Write|Can't|Permission|Read-only|No space|Disk)|file write failed|"
    r"PytorchStreamWriter|inline_container|unexpected pos",
    re.IGNORECASE,
)
#: below this many free bytes a write error without an errno is taken as a full file system
_FULL = 1 << 20


def _is_write_failure(exc: BaseException, target: Path, tmp: Path) -> bool:
    """Whether ``exc``, raised while ``tmp`` was written, is a failure to write (not, say, a missing input)."""
    if isinstance(exc, OSError):
        if exc.errno not in _WRITE_ERRNOS:
            return False
        names = {str(target), str(tmp), str(target.parent)}
        return exc.filename is None or str(exc.filename) in names or Path(str(exc.filename)).parent == target.parent
    return bool(_HIDDEN_WRITE_ERROR.search(str(exc))) or _hidden_cause(target, tmp) is not None


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _hidden_cause(target: Path, tmp: Path | None) -> str | None:
    """The cause of a write error that came without an errno, when this process can tell it:
    a full file system, or the file size limit (``ulimit -f``)."""
    free = _free_bytes(target.parent)
    if free is not None and free < _FULL:
        return "no space left on device"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if tmp is not None and limit != resource.RLIM_INFINITY:
        with contextlib.suppress(OSError):
            if tmp.stat().st_size + _FULL >= limit:
                return f"file too large: the file size limit (ulimit -f) is {_size(limit)}"
    return None


def _size(n: int) -> str:
    """``n`` bytes for a reader: ``512 bytes``, ``240.0 KiB``, ``1.5 GiB``."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def write_error(
    target: str | os.PathLike[str],
    exc: BaseException,
    *,
    tmp: str | os.PathLike[str] | None = None,
    kept: str | os.PathLike[str] | None = None,
) -> DataError:
    """The one-line :class:`DataError` for a failed write of ``target``: the file, the cause, what was kept.

    The cause is the errno's text (``no space left on device``, ``permission denied``,
    ``read-only file system``); for an error without one (netCDF4's ``NetCDF: HDF
    error``, torch's ``unexpected pos``) it is found here: a full file system, the file
    size limit, or else the library's own text. The free space of the file system is
    given as it was when the write failed (before the temporary file ``tmp`` is removed), and
    the space the partial file took.
    """
    target = Path(target)
    written = None
    if tmp is not None:
        with contextlib.suppress(OSError):
            written = Path(tmp).stat().st_blocks * 512  # allocated: an HDF5 file may be sparse
    if isinstance(exc, OSError) and exc.errno is not None:
        cause = os.strerror(exc.errno).lower()
        if exc.errno == errno.ENOTDIR:
            cause += f": {_first_non_folder(target.parent)} is a file"
    else:
        cause = _hidden_cause(target, Path(tmp) if tmp is not None else None) or one_line(str(exc), limit=200)
    free = _free_bytes(_existing_folder(target.parent))
    facts = [f"{_size(free)} free on its file system" if free is not None else ""]
    if written is not None:
        facts.append(f"the partial file took {_size(written)}")
    detail = f" ({', '.join(fact for fact in facts if fact)})" if any(facts) else ""
    if tmp is None:
        what = f"nothing was written; {'the earlier file is untouched' if target.exists() else 'no file was left'}"
    else:
        what = "the temporary file was removed and " + (
            "the earlier file is untouched" if target.is_file() else "no file was left at that name"
        )
    if kept is not None and Path(kept).exists():
        what += f"; progress so far is kept in {kept}"
    return DataError(f"{target}: cannot write the file: {cause}{detail}; {what}")


def _existing_folder(folder: Path) -> Path:
    """``folder``, or its nearest ancestor that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _first_non_folder(folder: Path) -> Path:
    """The first ancestor of ``folder`` (or itself) that exists and is not a folder (for ENOTDIR)."""
    for candidate in (*reversed(folder.parents), folder):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return folder


def unwritable_reason(folder: str | os.PathLike[str]) -> str | None:
    """Why files cannot be created in ``folder`` (made first if missing), or ``None`` if they can.

    Tried for real, creating and removing a temporary file in ``folder`` or, when it
    does not exist yet, in its nearest existing ancestor (nothing is created that
    stays): ``os.access`` says yes to root on a read-only mount or an immutable folder.
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"not a folder: {existing} is a file"
    try:
        fd, name = tempfile.mkstemp(prefix=".onepixel-write-check-", dir=existing)
    except OSError as exc:
        cause = os.strerror(exc.errno).lower() if exc.errno is not None else one_line(str(exc))
        return f"{cause} in {existing}"
    os.close(fd)
    os.unlink(name)
    return None


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json(
    obj: dict[str, Any],
    path: str | os.PathLike[str],
    *,
    kind: str,
    kept: str | os.PathLike[str] | None = None,
    sort_keys: bool = True,
) -> dict[str, Any]:
    """Write the dict ``obj`` as indented JSON to ``path`` atomically, with ``"format": "onepixel-<kind>/<version>"``.

    Keys are sorted unless ``sort_keys`` is false (then a dict's order, e.g. the config's order of attacks, is kept).

    Inside :func:`run_context`, a dict without a ``provenance`` key gets one.
    A failed write raises a one-line :class:`DataError` (see :func:`atomic_path`, also for ``kept``).

    Returns:
        The dict as written (a new dict, with ``format`` and any added ``provenance``).
    """
    if not isinstance(obj, dict):
        raise TypeError(f"write_json writes a dict (a JSON object), not {type(obj).__name__}")
    obj = {FORMAT_KEY: format_name(kind), **{key: value for key, value in obj.items() if key != FORMAT_KEY}}
    if "provenance" not in obj and current_run() is not None:
        obj["provenance"] = provenance()
    with atomic_path(path, kept=kept) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default) + "\n")
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


def write_netcdf(
    ds: Any,
    path: str | os.PathLike[str],
    *,
    kind: str,
    encoding: dict[str, Any] | None = None,
    kept: str | os.PathLike[str] | None = None,
) -> None:
    """Write an ``xarray.Dataset`` to ``path`` atomically (netCDF4 engine), stamped with the global
    attribute ``format = "onepixel-<kind>/<version>"``.

    Inside :func:`run_context`, provenance attributes the dataset lacks are added.
    A failed write (a full disk: netCDF4's ``NetCDF: HDF error``) raises a one-line
    :class:`DataError` naming the file and the cause (see :func:`atomic_path`, also for ``kept``).
    """
    attrs = {FORMAT_KEY: format_name(kind), **{key: value for key, value in ds.attrs.items() if key != FORMAT_KEY}}
    if current_run() is not None:
        attrs.update({key: value for key, value in provenance().items() if key not in attrs})
    ds = ds.copy(deep=False)
    ds.attrs = attrs
    with atomic_path(path, kept=kept) as tmp:
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
