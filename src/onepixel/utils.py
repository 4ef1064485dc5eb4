"""Small shared helpers: devices, atomic writes, provenance, seeding."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onepixel.errors import ConfigError, DataError, OnePixelError


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
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Inside :func:`run_context`, a dict without a ``provenance`` key gets one.
    """
    if isinstance(obj, dict) and "provenance" not in obj and _RUN.get() is not None:
        obj = {**obj, "provenance": provenance()}
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
    """Write an ``xarray.Dataset`` to ``path`` atomically (netCDF4 engine).

    Inside :func:`run_context`, provenance attributes the dataset lacks are added.
    """
    if _RUN.get() is not None:
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


# What the running workflow stage was made from (set by run_context, read by provenance).
_RUN: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("onepixel_run", default=None)


def _device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def provenance(device: torch.device | str | None = None) -> dict[str, str]:
    """Flat string dict describing how a result was made (for netCDF/JSON attributes).

    Always: ``onepixel_version``, ``git_commit``, ``python_version``, ``torch_version``,
    ``numpy_version``, ``xarray_version``, ``platform`` and ``device`` (the GPU's name
    or "cpu"; ``device=None`` means the work ran on the CPU, unless the enclosing
    :func:`run_context` names a device). Inside :func:`run_context` also
    ``config_digest``, ``study_config`` (the whole config as JSON) and ``seed``.
    """
    import onepixel

    run = _RUN.get() or {}
    info = {
        "onepixel_version": onepixel.__version__,
        "git_commit": git_commit(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "xarray_version": _version("xarray"),
        "platform": platform.platform(),
        "device": _device_name(device) if device is not None else run.get("device", "cpu"),
    }
    info.update({key: value for key, value in run.items() if key != "device"})
    return info


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


@contextlib.contextmanager
def run_context(config: Any, seed: int | None = None, device: str | None = None) -> Iterator[None]:
    """Mark the block as one stage of a study run made from ``config``.

    Every :func:`provenance` made inside records ``config_digest``
    (:func:`config_digest` of ``config``), ``study_config`` (``config`` as JSON) and,
    when given, ``seed`` (the seed of the random stream that chose the stage's
    content) and the device (``device`` as in the config, e.g. "auto", resolved
    here). :func:`write_json` and :func:`write_netcdf` add the provenance to every
    file written inside the block that lacks it, so each result of a workflow
    run says how it was made.
    """
    info = {
        "config_digest": config_digest(config),
        "study_config": json.dumps(config, sort_keys=True, default=_json_default),
    }
    if seed is not None:
        info["seed"] = str(int(seed))
    if device is not None:
        info["device"] = _device_name(resolve_device(device))
    token = _RUN.set(info)
    try:
        yield
    finally:
        _RUN.reset(token)


@contextlib.contextmanager
def log_to(path: str | os.PathLike[str] | None, threads: int | None = None) -> Iterator[None]:
    """Run a workflow job's block: stdout and stderr go to the file ``path`` (the job's log).

    ``threads`` also caps torch's intra-op threads, so parallel jobs do not
    oversubscribe the CPU.

    For the workflow's scripts (one job each), the block also
    * turns a user error (:class:`~onepixel.errors.OnePixelError`) into one line
      ``error: <message>`` in the log and on the job's own stderr, and exit status 2
      (no traceback);
    * turns SIGTERM (what a scheduler or ``kill`` sends) into ``SystemExit(143)``, so
      that files being written under a temporary name (:func:`atomic_path`) are
      removed instead of left behind. SIGINT already raises ``KeyboardInterrupt``.
    """
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    with _exit_on_sigterm():
        if path is None:
            configure_logging()
            with _user_errors_as_one_line(None):
                yield
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", buffering=1) as handle:
            with _user_errors_as_one_line(handle), contextlib.redirect_stdout(handle), \
                    contextlib.redirect_stderr(handle):
                configure_logging(handle)
                yield


@contextlib.contextmanager
def _user_errors_as_one_line(log: Any) -> Iterator[None]:
    """Print a OnePixelError as ``error: <message>`` (to ``log`` and the real stderr) and exit with status 2."""
    try:
        yield
    except OnePixelError as exc:
        line = f"error: {one_line(str(exc), limit=2000)}"
        for stream in (log, sys.__stderr__):
            if stream is not None:
                print(line, file=stream, flush=True)
        raise SystemExit(2) from None


def _raise_system_exit(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM raises ``SystemExit(143)`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_system_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` and all its submodules in eval mode for the block.

    Afterwards every submodule gets back its *own* training flag (``model.train(flag)``
    would set one flag for all, losing e.g. a frozen BatchNorm in a model that
    trains). Eval mode also keeps BatchNorm running statistics unchanged.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def deterministic_torch() -> Iterator[None]:
    """Ask torch for reproducible floating point for the block; restore its settings after.

    Disables TF32 in cuDNN convolutions and CUDA matrix products, cuDNN's
    benchmark-driven algorithm choice, and selects deterministic algorithms
    where torch has them (``torch.use_deterministic_algorithms(True,
    warn_only=True)``: operations without one warn instead of failing), without
    torch's filling of new memory (nothing here reads memory it has not written).
    On the CPU these settings change nothing: its kernels are deterministic for a
    given thread count. Sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (if unset), which
    cuBLAS reads when it is first used in the process.
    """
    from torch.utils import deterministic

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             deterministic.fill_uninitialized_memory)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    deterministic.fill_uninitialized_memory = False  # nothing reads memory before writing it: skip the fill
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        deterministic.fill_uninitialized_memory = saved[6]


def configure_logging(stream: Any = None) -> None:
    """Show the library's INFO messages (one line each, with the time) on ``stream`` (stderr)."""
    import logging

    logging.basicConfig(level=logging.INFO, stream=stream, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
