"""Long attacks keep their progress: an attack stopped mid-shard (an error, SIGTERM, SIGKILL, a full disk)
resumes from its partial file ``<out>.partial.nc``, attacks only the images it had not finished, and writes
the result an uninterrupted run writes."""

from __future__ import annotations

import re
import signal
import time

import numpy as np
import pytest
import xarray as xr

import onepixel.attack.stage as stage
from helpers import _assert_bit_identical
from onepixel.attack import load_attack
from onepixel.attack.de import OnePixelAttack
from onepixel.attack.stage import partial_path
from onepixel.stages import run_stage
from slow_job import start_slow_attack

CONFIG = {"num_images": 12, "population": 16, "generations": 6, "batch_size": 32, "seed": 3}


class Stop(Exception):
    """Raised from the per-image callback: the attack ends mid-shard."""


def attack(toy, out, cfg, engine=None):
    """The attack stage on ``toy`` with attack section ``cfg`` (and config ``engine`` when given, else its default)."""
    return run_stage(
        "attack",
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"},
        {"out": out},
        {"attack": cfg, "device": "cpu", **({"engine": engine} if engine is not None else {})},
        {"shard": 0},
    )


def count_runs(monkeypatch) -> list[tuple[int, int]]:
    """Record ``(rows resumed, rows DE finished)`` of every OnePixelAttack.run from now on."""
    runs: list[tuple[int, int]] = []
    real = OnePixelAttack.run

    def counting(self, *args, finished=None, on_finished=None, **kwargs):
        done = []

        def callback(rows):
            done.append(len(rows))
            if on_finished is not None:
                on_finished(rows)

        result = real(self, *args, finished=finished, on_finished=callback, **kwargs)
        runs.append((0 if finished is None else len(finished), sum(done)))
        return result

    monkeypatch.setattr(OnePixelAttack, "run", counting)
    return runs


def stop_after(monkeypatch, images: int) -> None:
    """Make OnePixelAttack.run raise Stop once ``images`` images have finished DE (after reporting them)."""
    real = OnePixelAttack.run

    def stopping(self, *args, on_finished=None, **kwargs):
        seen = []

        def callback(rows):
            on_finished(rows)
            seen.append(len(rows))
            if sum(seen) >= images:
                raise Stop

        return real(self, *args, on_finished=callback, **kwargs)

    monkeypatch.setattr(OnePixelAttack, "run", stopping)


def partial_rows(path) -> int:
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return int(ds.sizes["row"])


@pytest.mark.parametrize("targeted", [False, True])
def test_an_attack_stopped_mid_shard_resumes_to_the_uninterrupted_result(toy, tmp_path, monkeypatch, targeted):
    cfg = {**CONFIG, "targeted": targeted, "num_images": 6 if targeted else 12}
    rows = cfg["num_images"] * (2 if targeted else 1)  # 3 classes: 2 targets per image
    reference = attack(toy, tmp_path / "reference.nc", cfg)
    out = tmp_path / "shard.nc"
    monkeypatch.setattr(stage, "PARTIAL_EVERY_S", 1e9)  # no periodic write: only the one on the error
    with monkeypatch.context() as patch:
        stop_after(patch, 5)
        with pytest.raises(Stop):
            attack(toy, out, cfg)
    assert not out.exists() and partial_path(out) == tmp_path / "shard.partial.nc"
    kept = partial_rows(partial_path(out))
    assert 5 <= kept < rows
    runs = count_runs(monkeypatch)
    resumed = attack(toy, out, cfg)
    assert runs == [(kept, rows - kept)]  # DE ran for the missing rows only
    assert not partial_path(out).exists()  # removed once the output is written
    _assert_bit_identical(reference, resumed, "resumed attack")
    _assert_bit_identical(load_attack(tmp_path / "reference.nc"), load_attack(out), "resumed attack file")


def test_a_partial_file_of_another_attack_is_ignored_with_a_notice(toy, tmp_path, monkeypatch, capfd):
    out = tmp_path / "shard.nc"
    monkeypatch.setattr(stage, "PARTIAL_EVERY_S", 0.0)  # written after every finished image
    with monkeypatch.context() as patch:
        stop_after(patch, 4)
        with pytest.raises(Stop):
            attack(toy, out, CONFIG)
    assert partial_rows(partial_path(out)) >= 4
    other = {**CONFIG, "F": 0.7}  # the same images, another search
    capfd.readouterr()
    runs = count_runs(monkeypatch)
    result = attack(toy, out, other)
    err = capfd.readouterr().err
    assert f"attack: ignoring {partial_path(out)}: made with another attack_config; attacking every image" in err
    assert runs == [(0, 12)] and not partial_path(out).exists()
    _assert_bit_identical(attack(toy, tmp_path / "fresh.nc", other), result, "attack after an ignored partial file")
    # a damaged partial file is ignored too
    partial_path(out).write_bytes(b"garbage")
    attack(toy, out, CONFIG)
    assert f"attack: ignoring {partial_path(out)}: not readable" in capfd.readouterr().err


def test_a_full_disk_for_the_partial_file_does_not_end_the_attack(toy, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(stage, "PARTIAL_EVERY_S", 0.0)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", full, raising=True)
    monkeypatch.setattr(stage, "save_attack", lambda ds, path: None)  # the output itself is not the point here
    attack(toy, tmp_path / "shard.nc", CONFIG)
    err = capfd.readouterr().err
    said = re.findall(
        r"^attack: could not write shard.partial.nc \(.*no space left on device.*\); going on", err, re.M | re.I
    )
    assert len(said) == 1  # said once (on the console; and in the log), and the attack goes on


@pytest.mark.slow
def test_a_killed_attack_job_resumes_from_its_partial_file(toy, tmp_path, monkeypatch):
    """SIGKILL (no chance to clean up) of a workflow attack job once its partial file exists; the rerun
    resumes from the images it had written."""
    cfg = {**CONFIG, "batch_size": 16}  # one image in flight at a time
    reference = attack(toy, tmp_path / "reference.nc", cfg)
    log, out = tmp_path / "job.log", tmp_path / "shard.nc"
    job = start_slow_attack(toy, cfg, delay=0.1, log=log, out=out)
    deadline = time.monotonic() + 120
    try:
        while job.poll() is None and time.monotonic() < deadline:
            if partial_path(out).exists() and partial_rows(partial_path(out)) >= 3:
                job.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        _, err = job.communicate(timeout=60)
    assert job.returncode == -signal.SIGKILL, f"{err}\n{log.read_text()}"
    assert not out.exists()
    kept = partial_rows(partial_path(out))
    assert 3 <= kept < 12
    runs = count_runs(monkeypatch)
    resumed = attack(toy, out, cfg)
    assert runs == [(kept, 12 - kept)]
    _assert_bit_identical(reference, resumed, "attack resumed after SIGKILL")
    assert np.array_equal(resumed["sample_id"].values, reference["sample_id"].values)
