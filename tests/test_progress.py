"""Progress you can watch (onepixel.progress): plain lines in a job's log while it runs, a live bar on a
terminal, one summary line per job on the console; and notices a newcomer must not miss."""

from __future__ import annotations

import contextlib
import io
import re
import time

import pytest

from onepixel.progress import Progress, announce, duration
from onepixel.stages import run_stage
from slow_job import start_slow_attack

#: a small attack of the toy LeNet (conftest's `toy`): one image in flight at a time
SLOW_CONFIG = {"num_images": 8, "population": 16, "generations": 4, "batch_size": 16, "seed": 4}


def test_progress_lines_reach_the_attack_jobs_log_while_it_runs(toy, tmp_path):
    log, out = tmp_path / "job.log", tmp_path / "shard.nc"
    job = start_slow_attack(toy, SLOW_CONFIG, delay=0.05, log=log, out=out)
    seen = None
    deadline = time.monotonic() + 120
    try:
        while seen is None and job.poll() is None and time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            done = [int(n) for n in re.findall(r"onepixel\.progress: attack lenet: (\d+)/8 images", text)]
            if any(0 < n < 8 for n in done) and job.poll() is None and not out.exists():
                seen = text  # read while the job runs, some images done, not all
            time.sleep(0.02)
    finally:
        _, err = job.communicate(timeout=120)
    assert seen is not None, f"no progress line while the job ran:\n{log.read_text()}\n{err}"
    assert job.returncode == 0, err
    text = log.read_text()
    assert "\r" not in text  # plain lines, no terminal redraws
    lines = [line for line in text.splitlines() if "onepixel.progress: attack lenet" in line]
    assert lines[0].endswith("0/8 images (0 %) [00:00<?, ? images/s]")
    assert re.search(r"attack lenet: 8/8 images \(100 %\) \[\d\d:\d\d<00:00, +[\d.]+ (images/s|s/images)\]$", lines[-1])
    # the summary line: in the log (time-stamped), and on the console (the job's own stderr, Snakemake's)
    summary = r"attack lenet: \d/8 fooled, [\d,]+ queries per image, [\d.]+ s"
    assert re.search(rf"^\d\d:\d\d:\d\d onepixel: {summary}$", text, re.M), text
    assert re.search(rf"^{summary}$", err, re.M), err


def test_a_log_gets_plain_lines_at_most_every_interval():
    stream = io.StringIO()
    with Progress("capture lenet", 1000, "images", stream=stream, interval=3600) as progress:
        for _ in range(1000):
            progress.update()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()  # the start and the end, nothing between
    assert lines[0].endswith("onepixel.progress: capture lenet: 0/1000 images (0 %) [00:00<?, ? images/s]")
    assert "capture lenet: 1000/1000 images (100 %)" in lines[1]
    stream = io.StringIO()
    with Progress("train lenet", 3, "batches", stream=stream, interval=0, initial=1) as progress:
        progress.update(2)
    lines = stream.getvalue().splitlines()
    assert "train lenet: 1/3 batches" in lines[0] and "train lenet: 3/3 batches" in lines[1]
    assert len(lines) == 2  # the last update said it all: no repeated end line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_bar():
    stream = _Terminal()
    with Progress("attack lenet", 10, "images", stream=stream) as progress:
        progress.update(10)
    assert "\r" in stream.getvalue() and "10/10" in stream.getvalue()


def test_announce_reaches_the_log_and_the_console(tmp_path, capfd):
    log = tmp_path / "job.log"
    with open(log, "w") as handle, contextlib.redirect_stderr(handle):  # a workflow job: stderr is its log
        announce("attack lenet: 63/100 fooled")
    assert re.fullmatch(r"\d\d:\d\d:\d\d onepixel: attack lenet: 63/100 fooled\n", log.read_text())
    assert "attack lenet: 63/100 fooled\n" in capfd.readouterr().err  # sys.__stderr__: the console


def test_duration():
    assert [duration(s) for s in (3.21, 45, 160, 9000)] == ["3.2 s", "45 s", "2.7 min", "2.5 h"]


def test_too_few_correct_images_is_said_on_the_console(toy, tmp_path, capfd):
    run_stage(
        "select_images",
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"},
        {"out": tmp_path / "sel.json"},
        {"attack": {"num_images": 1000}, "device": "cpu"},
    )
    err = capfd.readouterr().err
    assert re.search(
        r"^attack: only \d+ of the test images are correctly classified, fewer than attack.num_images = 1000: "
        r"attacking those \d+$",
        err,
        re.M,
    ), err


@pytest.mark.parametrize("stage", ["locality", "vulnerability"])
def test_the_analyses_show_progress_and_a_summary(toy, tmp_path, capfd, stage):
    attack = tmp_path / "a.nc"
    run_stage(
        "attack",
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc"},
        {"out": attack},
        {"attack": {"num_images": 4, "population": 12, "generations": 3}, "device": "cpu"},
    )
    capfd.readouterr()
    run_stage(
        stage,
        {"checkpoint": toy / "lenet.pt", "test": toy / "test.nc", "attack": attack},
        {"out": tmp_path / "out.nc"},
        {"device": "cpu"},
    )
    err = capfd.readouterr().err
    assert re.search(rf"onepixel\.progress: {stage} lenet: 0/\d+ evaluations", err), err
    assert re.search(rf"^{stage} lenet: .*, [\d.]+ s$", err, re.M), err
