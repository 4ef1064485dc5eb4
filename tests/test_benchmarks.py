"""The benchmarks run and report finite numbers (no speed thresholds: the machine may be busy)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def test_attack_throughput_runs(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import attack_throughput
    finally:
        sys.path.remove(str(BENCH))
    attack_throughput.main(
        [
            "--batch-size",
            "120",
            "--population",
            "20",
            "--generations",
            "1",
            "--images",
            "3",
            "--rounds",
            "1",
            "--inputs",
            "1x8",
        ]
    )
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("1x8x8"))
    ratio = float(row.split()[4])
    assert math.isfinite(ratio) and ratio > 0


@pytest.mark.slow
def test_compare_tools_quick(tmp_path):
    out_json = tmp_path / "compare.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "compare_tools.py"), "--quick", "--json", str(out_json)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    if out.startswith("skipped:"):
        pytest.skip(out.strip())
    table = [line for line in out.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in table[0].strip("|").split("|")]
    assert header[:2] == ["tool", "population"] and "evals/s" in header and "peak MiB" in header
    assert "evals/s / plain" in header and "success %" in header and "succ/s" in header
    rows = {line.strip("|").split("|")[0].strip(): line for line in table[1:]}
    assert set(rows) == {"onepixel rand1", "onepixel best1bin", "torchattacks", "ART"}

    report = json.loads(out_json.read_text())
    by_tool = {row["tool"]: row for row in report["rows"]}
    installed = {
        "torchattacks": importlib.util.find_spec("torchattacks") is not None,
        "ART": importlib.util.find_spec("art") is not None,
    }
    for tool, row in by_tool.items():
        if not installed.get(tool, True):
            assert row["skipped"] == "not installed"
            continue
        assert "skipped" not in row, row
        for key in ("evals", "wall s", "evals/s", "succ/s", "success %", "peak MiB", "plain img/s", "evals/s / plain"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]), (tool, key, row[key])
        assert row["evals"] > 0 and row["wall s"] > 0 and 0 <= row["success %"] <= 100 and row["peak MiB"] >= 0
        assert row["population"] == report["setup"]["population"], tool  # the same budget for every tool
        assert row["one_pixel_violations"] == 0, tool
    throughput = report["throughput"]
    assert math.isfinite(throughput["ratio"]) and throughput["ratio"] > 0
    assert "onepixel full-batch throughput" in out


@pytest.mark.slow  # starts snakemake (or a benchmark) in a subprocess
def test_capture_throughput_runs(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import capture_throughput
    finally:
        sys.path.remove(str(BENCH))
    report = capture_throughput.main(
        ["--model", "lenet", "--images", "12", "--batch-size", "5", "--rounds", "1", "--memory", "6,24"]
    )
    out = capsys.readouterr().out
    assert "(capture + PM) / forward" in out and "peak ratio 24 / 6 samples" in out
    assert [row["codec"] for row in report["rows"]] == ["zstd", "zlib", "none"]
    for row in report["rows"]:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0 and row["write_mib_s"] > 0
    sizes = {row["codec"]: row["size_ratio"] for row in report["rows"]}
    assert sizes["zstd"] < sizes["none"] and sizes["zlib"] < sizes["none"]
    assert all(peak > 0 for peak in report["peak_rss_mib"].values())


@pytest.mark.slow  # starts a benchmark in subprocesses
def test_batch_memory_stays_within_its_budget(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import batch_memory
    finally:
        sys.path.remove(str(BENCH))
    worst = batch_memory.main(["--size", "64", "--budgets", "16", "64", "--population", "8", "--threads", "1"])
    out = capsys.readouterr().out
    assert "largest working memory / budget" in out
    # the default batch of 8192 would need about 8192 x 0.8 MiB; capped, the attack stays within 16 and 64 MiB
    rows = [line.split() for line in out.splitlines() if line.strip()[:2] in ("16", "64")]
    assert [int(row[1]) for row in rows] == [20, 80]
    assert 0 < worst <= 1.0


def _markdown_rows(out: str, first_cell: str) -> list[list[str]]:
    """The cells of the Markdown table rows of ``out`` whose first cell is ``first_cell``."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in out.splitlines()]
    return [row for row in rows if row and row[0] == first_cell]


def test_incremental_benchmark_runs(capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import incremental
    finally:
        sys.path.remove(str(BENCH))
    incremental.main(["--models", "lenet:32", "resnet20:16", "--batch", "64", "--rounds", "1"])
    out = capsys.readouterr().out
    for name in ("lenet", "resnet20"):
        (row,) = _markdown_rows(out, name)
        plain, fast, ratio, error = float(row[3]), float(row[4]), float(row[5]), float(row[8])
        assert plain > 0 and fast > 0 and ratio == pytest.approx(fast / plain, rel=0.02, abs=0.01)
        assert error < 1e-5  # the two ways agree to float32 rounding


def test_engines_benchmark_runs(capsys):
    """The stages' engines side by side: every workload's results agree, and auto's pick is printed."""
    sys.path.insert(0, str(BENCH))
    try:
        import engines
    finally:
        sys.path.remove(str(BENCH))
    engines.main(["--quick"])
    out = capsys.readouterr().out
    rows = _markdown_rows(out, "lenet")
    assert [row[1] for row in rows] == ["DE 10x2", "sweep, 8 colours", "vulnerability maps"]
    for row in rows:
        dense, fast, ratio = float(row[3]), float(row[4]), float(row[5])
        assert dense > 0 and fast > 0 and ratio == pytest.approx(fast / dense, rel=0.02, abs=0.01)
        assert row[6].split()[0] in ("dense", "incremental") and row[7] == "yes"
