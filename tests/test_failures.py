"""One line for every failure: unwritable outputs, a full disk, Ctrl-C / SIGTERM, missing or malformed configs.

Each failure is checked for its exit status, exactly one line on stderr naming the file or key,
no temporary file left behind and finished work kept. The read-only folder and the full disk
are real where this machine allows it (as root: a tmpfs mount, remounted read-only, or
``chattr +i``; a non-root user: ``chmod``), and the full disk also as the file size limit
(``RLIMIT_FSIZE``), which needs no privilege.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import _copy_workflow, _env
from onepixel.cli import main
from onepixel.workflow.preflight import configfiles

#: a record of the library's logging (onepixel.jobs.configure_logging): not a message line
_LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d onepixel[\w.]*: ")


def _lines(err: str) -> list[str]:
    """stderr without the library's log records."""
    return [line for line in err.splitlines() if not _LOG_RECORD.match(line)]


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".onepixel-write-check")]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


def _can_create(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def _mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``folder`` (root with CAP_SYS_ADMIN only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return mounted.returncode == 0


def _umount(folder: Path) -> None:
    # lazily: HDF5 keeps the handle of a file it failed to close after ENOSPC (emptied and removed)
    subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, check=True)


@contextlib.contextmanager
def _read_only(folder: Path, fill: Callable[[Path], None]) -> Iterator[str]:
    """Make ``folder`` read-only for this process (also as root), after ``fill(folder)``; yields how."""
    folder.mkdir(parents=True, exist_ok=True)
    if _mount_tmpfs(folder, "1m"):
        fill(folder)
        if subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode == 0:
            try:
                yield "read-only tmpfs"
            finally:
                _umount(folder)
            return
        _umount(folder)
    fill(folder)
    if os.geteuid() == 0:
        if (
            shutil.which("chattr")
            and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        ):
            try:
                assert not _can_create(folder)
                yield "chattr +i"
            finally:
                subprocess.run(["chattr", "-i", str(folder)], check=True)
            return
        pytest.skip("root without mount or chattr +i: no folder that root cannot write")
    folder.chmod(0o555)
    try:
        yield "chmod 555"
    finally:
        folder.chmod(0o755)


def _fill_earlier(folder: Path) -> None:
    (folder / "train.nc").write_bytes(b"an earlier train split")


# ===========================================================================
# 1. output locations are checked before any work
# ===========================================================================
def test_prepare_data_into_a_read_only_folder_is_one_line(tmp_path, capsys):
    out = tmp_path / "ro"
    with _read_only(out, _fill_earlier) as how:
        status = main(["prepare-data", "--train", str(out / "train.nc"), "--test", str(out / "test.nc")])
        err = capsys.readouterr().err
        assert status == 2, err
        lines = _lines(err)
        assert len(lines) == 1 and err.count("\n") == 1, err
        reason = "(read-only file system" if how == "read-only tmpfs" else "("
        assert lines[0].startswith(f"error: prepare-data: cannot write output 'train' to {out / 'train.nc'} {reason}")
        assert "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == ["train.nc"]  # the earlier file, untouched
        assert (out / "train.nc").read_bytes() == b"an earlier train split"


def test_an_output_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "train.nc"
    assert main(["prepare-data", "--train", str(out), "--test", str(tmp_path / "test.nc")]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: prepare-data: cannot write output 'train' to {out} (not a folder: {tmp_path / 'a-file'} is a file); "
        "nothing was run: give a writable location\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_propagation_with_an_unwritable_output_fails_before_computing(tmp_path, capsys, monkeypatch, where):
    import onepixel.analysis.propagation

    def entered(job):
        raise AssertionError("the stage function ran")

    monkeypatch.setattr(onepixel.analysis.propagation, "propagation_stage", entered)
    cubes = tmp_path / "cubes"  # never read: the output is checked first
    if where == "under-a-file":
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "pm.nc"
        context: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    else:
        out = tmp_path / "ro" / "pm.nc"
        context = _read_only(out.parent, lambda folder: None)
    with context:
        started = time.perf_counter()
        status = main(["propagation", "--cubes", str(cubes), "--out", str(out)])
        assert time.perf_counter() - started < 5
        err = capsys.readouterr().err
        assert status == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: propagation: cannot write output 'out' to {out} (")
        assert not out.exists() and _leftovers(out.parent if out.parent.is_dir() else tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_an_output_folder_without_write_permission_is_one_line(tmp_path):
    """os.access would say yes to root: the check tries for real, here as the user nobody."""
    folder = Path(tempfile.mkdtemp(prefix="onepixel-perm-"))
    try:
        folder.chmod(0o755)  # root's folder: nobody may read, not write
        (folder / "out").mkdir()
        script = (
            "from onepixel.errors import DataError\n"
            "from onepixel.stages import run_stage\n"
            "try:\n"
            f"    run_stage('propagation', {{'cubes': 'x'}}, {{'out': {str(folder / 'out' / 'pm.nc')!r}}})\n"
            "except DataError as exc:\n"
            "    print(exc)\n"
        )
        result = subprocess.run(
            ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", script],
            cwd=folder,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            f"propagation: cannot write output 'out' to {folder / 'out' / 'pm.nc'} "
            f"(permission denied in {folder / 'out'}); nothing was run: give a writable location\n"
        )
        assert list((folder / "out").iterdir()) == []
    finally:
        shutil.rmtree(folder)


# ===========================================================================
# 2. a failed write names the file, the cause and what was kept
# ===========================================================================
def test_a_full_disk_during_a_netcdf_write_is_one_line(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, "64k"):  # the digits' train split takes about 72 KiB
        pytest.skip("cannot mount a small tmpfs here (root with CAP_SYS_ADMIN only); see the RLIMIT_FSIZE test")
    try:
        _fill_earlier(disk)
        status = main(["prepare-data", "--train", str(disk / "train.nc"), "--test", str(disk / "test.nc")])
        err = capsys.readouterr().err
        assert status == 2, err
        lines = _lines(err)
        assert len(lines) == 1, err
        assert re.fullmatch(
            rf"error: {re.escape(str(disk / 'train.nc'))}: cannot write the file: no space left on device "
            r"\(\d+ bytes free on its file system, the partial file took [\d.]+ KiB\); "
            r"the temporary file was removed and the earlier file is untouched",
            lines[0],
        ), lines[0]
        assert sorted(p.name for p in disk.iterdir()) == ["train.nc"]
        assert (disk / "train.nc").read_bytes() == b"an earlier train split"
        assert shutil.disk_usage(disk).free >= 48 * 1024  # the partial file's space is given back
    finally:
        _umount(disk)


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # stays ignored across exec: writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))


def test_a_write_past_the_file_size_limit_is_one_line(tmp_path):
    """The full disk where no tmpfs can be mounted: RLIMIT_FSIZE makes real writes fail (EFBIG)."""
    (tmp_path / "test.nc").write_bytes(b"an earlier test split")
    result = subprocess.run(
        [sys.executable, "-m", "onepixel", "prepare-data", "--train", "train.nc", "--test", "test.nc"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size,
    )
    assert result.returncode == 2, result.stderr
    lines = _lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: train.nc: cannot write the file: file too large: the file size limit")
    assert lines[0].endswith("the temporary file was removed and no file was left at that name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.nc"]
    assert (tmp_path / "test.nc").read_bytes() == b"an earlier test split"


def test_a_failed_write_mentions_the_progress_kept(tmp_path):
    from onepixel.errors import DataError
    from onepixel.files import atomic_path

    (tmp_path / "out.nc").write_bytes(b"earlier")
    (tmp_path / "out.partial.nc").write_bytes(b"progress")
    with pytest.raises(DataError) as info, atomic_path(tmp_path / "out.nc", kept=tmp_path / "out.partial.nc") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'out.nc'}: cannot write the file: no space left on device (")
    assert message.endswith(
        f"the temporary file was removed and the earlier file is untouched; progress so far is kept in "
        f"{tmp_path / 'out.partial.nc'}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nc", "out.partial.nc"]
    assert (tmp_path / "out.nc").read_bytes() == b"earlier"


def test_an_error_that_is_not_a_write_failure_passes_unchanged(tmp_path):
    from onepixel.files import atomic_path

    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "out.nc"):
        open(tmp_path / "missing-input.nc")  # noqa: SIM115 - an input, not the write
    with pytest.raises(RuntimeError, match="a bug"), atomic_path(tmp_path / "out.nc"):
        raise RuntimeError("a bug")
    assert list(tmp_path.iterdir()) == []


# ===========================================================================
# 3. Ctrl-C and SIGTERM: one line, status 130 / 143, no temporary file
# ===========================================================================
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    assert main(["prepare-data", "--train", str(root / "train.nc"), "--test", str(root / "test.nc")]) == 0
    return root


_TRAIN = ["--model", "lenet", "--set", "train.epochs=100000", "--set", "device=cpu"]

_JOB = """
import sys
from pathlib import Path
from onepixel.jobs import log_to
from onepixel.stages import run_stage

data, out = Path(sys.argv[1]), Path(sys.argv[2])
with log_to(out / "train.log", threads=1, what="train"):
    run_stage(
        "train",
        {"train": data / "train.nc", "test": data / "test.nc"},
        {"checkpoint": out / "lenet.pt", "metrics": out / "metrics.json"},
        {"train": {"epochs": 100000}, "device": "cpu"},
        wildcards={"model": "lenet"},
    )
"""


def _interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], bool], sig: int) -> None:
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.05)
    proc.send_signal(sig)


# each starts a job in a subprocess (seconds of imports): the fast tier runs one signal of each kind of job
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"]
)
def test_an_interrupted_cli_job_is_one_line(digits, tmp_path, sig):
    err_path, out_path = tmp_path / "stderr", tmp_path / "stdout"
    files = ["--test", str(digits / "test.nc"), "--checkpoint", "lenet.pt", "--metrics", "metrics.json"]
    with open(err_path, "w") as err, open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "onepixel", "train", "--train", str(digits / "train.nc"), *files, *_TRAIN],
            cwd=tmp_path,
            env=_env(),
            stdout=out,
            stderr=err,
            text=True,
        )
        try:  # once the first epoch is done (train prints its epochs on stdout)
            _interrupt_when(proc, lambda: "epoch 1/" in out_path.read_text(), sig)
            status = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = err_path.read_text()
    assert status == 128 + sig, text
    lines = _lines(text)
    assert len(lines) == 1, text
    name = signal.Signals(sig).name
    assert re.fullmatch(rf"error: interrupted \({name}\) during train after [\d.]+ s; .*", lines[0]), lines[0]
    assert "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr", "stdout"]  # no checkpoint, no temporary file


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGINT, marks=pytest.mark.slow), signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
)
def test_an_interrupted_workflow_job_is_one_line_on_the_console_and_in_its_log(digits, tmp_path, sig):
    log = tmp_path / "train.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _JOB, str(digits), str(tmp_path)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _interrupt_when(proc, lambda: log.exists() and "epoch 1/" in log.read_text(), sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert re.fullmatch(rf"error: interrupted \({name}\) during train after [\d.]+ s; [^\n]*\n", err), err
    assert out == ""
    assert log.read_text().splitlines()[-1] == err.strip()
    assert "Traceback" not in log.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.log"]


# ===========================================================================
# 4. config files missing or malformed: the file, and the line and column
# ===========================================================================
def test_a_missing_config_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["validate-config", "--config", "config/nonexistent.yaml"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: config file not found: config/nonexistent.yaml (relative to the working directory {tmp_path})\n"
    )
    assert captured.out == ""


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("attack:\n  population: [1, 2\n", "3:1", "expected ',' or ']', but got '<stream end>'"),
        ("attack:\n  population: 5\n   generations: 3\n", "3:15", "mapping values are not allowed here"),
        ("train:\n\tepochs: 1\n", "2:1", "found character '\\t' that cannot start any token"),
    ],
    ids=["unclosed", "indentation", "tab"],
)
def test_a_malformed_config_file_names_its_line_and_column(tmp_path, capsys, text, where, problem):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    status = main(["propagation", "--cubes", "x", "--out", str(tmp_path / "pm.nc"), "--config", str(config)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {config}:{where}: not valid YAML: {problem}"), err
    assert list(tmp_path.iterdir()) == [config]


_SNAKEMAKE_BANNER = "Using workflow specific profile profiles/default for setting default command line arguments."


@pytest.fixture
def workdir(tmp_path) -> Path:
    return _copy_workflow(tmp_path / "wf")


@pytest.mark.slow  # starts snakemake
@pytest.mark.parametrize("case", ["missing", "malformed"])
def test_snakemake_with_a_missing_or_malformed_workflow_config_is_one_line(workdir, case):
    config = workdir / "config" / "config.yaml"
    if case == "missing":
        config.unlink()
        expected = (
            f"error: config file not found: config/config.yaml (relative to the working directory {workdir}); "
            "or give one with --configfile"
        )
    else:
        config.write_text("attack:\n  population: [1, 2\n")
        expected = (
            "error: config/config.yaml:3:1: not valid YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence started at line 2, column 15)"
        )
    result = _run(["snakemake", "-n"], workdir)
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line != _SNAKEMAKE_BANNER] == [expected], result.stderr
    assert not (workdir / "results").exists()


@pytest.mark.slow  # starts snakemake
@pytest.mark.parametrize("case", ["missing", "malformed"])
def test_snakemake_configfile_errors_are_one_line(workdir, case):
    """Snakemake 9 reads the files of --configfile itself, before the Snakefile (a traceback for a
    missing file, no file or line for a malformed one); the workflow profile profiles/default checks
    them first (onepixel.workflow.preflight)."""
    name = "config/nonexistent.yaml"
    expected = f"error: config file not found: {name} (relative to the working directory {workdir})"
    if case == "malformed":
        name = "config/malformed.yaml"
        (workdir / name).write_text("attack:\n  population: [1, 2\n")
        expected = (
            f"error: {name}:3:1: not valid YAML: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence started at line 2, column 15)"
        )
    for args in (["--configfile", name], [f"--configfile={name}"], ["--configfiles", "config/config.yaml", name]):
        result = _run(["snakemake", "-n", *args, "--cores", "1"], workdir)
        assert result.returncode == 2, result.stdout + result.stderr
        assert [line for line in result.stderr.splitlines() if line != _SNAKEMAKE_BANNER] == [expected], result.stderr
        assert "Traceback" not in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def test_the_configfile_arguments_of_a_snakemake_command_line():
    argv = ["-n", "--configfile", "a.yaml", "b.yaml", "--cores", "1", "--configfile=c.yaml", "target", "--configfiles"]
    assert configfiles(argv) == ["a.yaml", "b.yaml", "c.yaml"]
    assert configfiles(["--config", "x=1", "results/x"]) == []
