"""Small shared helpers: devices, atomic writes, provenance, seeding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onepixel.errors import ConfigError, DataError


def resolve_device(device: str = "auto") -> torch.device:
    """Return the torch device for ``device`` ("auto", "cpu", "cuda", "cuda:1"...).

    "auto" picks CUDA when available, the CPU otherwise.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device: {device!r} is not a device; use auto, cpu or cuda[:N]") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available; use auto or cpu")
    return resolved


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
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_netcdf(ds: Any, path: str | os.PathLike[str], encoding: dict[str, Any] | None = None) -> None:
    """Write an ``xarray.Dataset`` to ``path`` atomically (netCDF4 engine)."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding)


def open_netcdf(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> Any:
    """Load a netCDF file fully into memory, with a clear error if it is missing or foreign.

    ``required`` names variables that must be present.
    """
    import xarray as xr

    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: file not found")
    try:
        with xr.open_dataset(file, engine="netcdf4") as ds:
            loaded = ds.load()
    except Exception as exc:  # netCDF4 raises OSError/ValueError/RuntimeError for corrupt files
        raise DataError(f"{file}: not a readable netCDF file ({exc.__class__.__name__}: {exc})") from exc
    missing = [name for name in required if name not in loaded.variables]
    if missing:
        raise DataError(f"{file}: missing variable(s) {', '.join(missing)}; is it the right kind of file?")
    return loaded


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy globally and return a CPU ``torch.Generator`` seeded with ``seed``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_digest(config: Any) -> str:
    """Short SHA-256 of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_commit() -> str:
    """The current git commit of the working directory, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """Flat string dict describing how a result was made (for netCDF/JSON attributes)."""
    import onepixel

    info = {
        "onepixel_version": onepixel.__version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "platform": platform.platform(),
    }
    if device is not None:
        dev = torch.device(device)
        info["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return info


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str] | None, threads: int | None = None) -> Iterator[None]:
    """Send stdout and stderr to the file ``path`` (a workflow job's log) for the block.

    ``threads`` also caps torch's intra-op threads, so parallel jobs do not
    oversubscribe the CPU.
    """
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    if path is None:
        configure_logging()
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        configure_logging(handle)
        yield


def configure_logging(stream: Any = None) -> None:
    """Show the library's INFO messages (one line each, with the time) on ``stream`` (stderr)."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=stream, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
