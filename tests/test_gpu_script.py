"""benchmarks/gpu.py, the one script of the GPU measurements, keeps working: its --tiny run on the CPU.

No speed thresholds (the machine may be busy): every section is there, the ones whose
dependencies are installed here report "ok" with finite positive numbers, a section
made to fail leaves the others "ok" and the files complete, and gpu.md is a table of
every section.
"""

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
SECTIONS = ("determinism", "incremental", "capture", "compare_tools", "attack_forward_ratio", "paper_setting")
#: where gpu.py looks for the CIFAR-10 subset by default
SUBSETS = (REPO / "shared" / "data" / "cifar10-subset", REPO.parent / "shared" / "data" / "cifar10-subset")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    return env


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _summary_rows(md: str) -> dict[str, list[str]]:
    """The first Markdown table of gpu.md: section -> its cells."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| section |"))
    assert lines[start + 1].startswith("|---"), lines[start + 1]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells
    return rows


def _expected_status() -> dict[str, str]:
    return {
        "determinism": "ok",
        "incremental": "ok" if _installed("onepixel.incremental") else "skipped",
        "capture": "ok",  # netCDF4 is a dependency of the project
        "compare_tools": "ok" if _installed("torchattacks") else "skipped",
        "attack_forward_ratio": "ok",
        "paper_setting": "ok" if any(p.exists() for p in SUBSETS) else "skipped",
    }


def _check_ok(name: str, rec: dict) -> None:
    assert _positive(rec["seconds"]), (name, rec)
    if name == "determinism":
        assert rec["identical"] is True, rec
        assert rec["deterministic_torch"]["identical"] is True and rec["torch_defaults"]["identical"] is True
        assert _positive(rec["candidates"])
    elif name == "incremental":
        for row in rec["rows"]:
            for key in ("dense cand/s", "incremental cand/s", "speedup"):
                assert _positive(row[key]), (key, row)
            assert math.isfinite(row["max abs logit diff"])
        de = rec["de"]  # the DE attack through both engines: same results
        assert _positive(de["dense cand/s"]) and _positive(de["incremental cand/s"]) and de["same results"] is True
    elif name == "capture":
        assert [row["codec"] for row in rec["rows"]] == ["zstd", "none"]
        assert _positive(rec["forward_s"])
        for row in rec["rows"]:
            for key in ("capture_s", "propagation_s", "ratio", "write_mib_s", "size_ratio"):
                assert _positive(row[key]), (key, row)
    elif name == "compare_tools":
        for row in rec["rows"]:
            assert "skipped" in row or (_positive(row["evals/s"]) and _positive(row["plain img/s"])), row
    elif name == "attack_forward_ratio":
        assert {row["model"] for row in rec["rows"]} == {"resnet20", "wrn16_4"}
        for row in rec["rows"]:
            assert "skipped" not in row, row
            keys = ["plain img/s", "attack cand/s", "ratio"]
            keys += [
                f"{v} {unit}"
                for v in ("tf32", "bf16", "channels_last", "channels_last_bf16")
                for unit in ("img/s", "speedup")
            ]
            for key in keys:
                assert _positive(row[key]), (key, row)
    elif name == "paper_setting":
        assert rec["complete"] is True and rec["images"] == rec["images_finished"] == 4
        assert 0 <= rec["success_rate"] <= 1 and _positive(rec["attack_seconds"]) and _positive(rec["candidates_per_s"])
        assert 0 < rec["test_accuracy"] <= 1 and rec["enough_images"] is True


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH / "gpu.py"), "--tiny", "--device", "cpu", "--threads", "1", "--out", str(out)]
    return subprocess.run([*cmd, *extra], cwd=out.parent, env=_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # runs the whole script in a subprocess (about 30 s)
def test_gpu_script_tiny_run(tmp_path):
    out = tmp_path / "tmp"
    result = _run(out)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "gpu.json").read_text())
    assert report["format"] == "onepixel-gpu-benchmarks/1" and report["tiny"] is True
    assert report["order"] == list(SECTIONS) and set(report["sections"]) == set(SECTIONS)
    expected = _expected_status()
    for name, rec in report["sections"].items():
        assert rec["status"] == expected[name], (name, rec)
        assert "seconds" in rec
        if rec["status"] == "ok":
            assert "error" not in rec, rec
            _check_ok(name, rec)
        else:
            assert rec["error"], rec  # skipped with the reason
    if expected["compare_tools"] == "skipped":
        assert "torchattacks" in report["sections"]["compare_tools"]["error"]
    rows = _summary_rows((out / "gpu.md").read_text())
    assert set(rows) == set(SECTIONS)
    for name, cells in rows.items():
        assert cells[1] == report["sections"][name]["status"], cells
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary file left


@pytest.mark.slow  # runs the script in a subprocess
def test_gpu_script_a_failing_section_loses_nothing(tmp_path):
    out = tmp_path / "tmp"
    result = _run(out, "--sections", "determinism,paper_setting", "--fail", "determinism")
    assert result.returncode == 1, result.stdout + result.stderr  # a failed section: exit status 1
    report = json.loads((out / "gpu.json").read_text())
    sections = report["sections"]
    assert set(sections) == set(SECTIONS)
    assert sections["determinism"]["status"] == "failed"
    assert "forced failure" in sections["determinism"]["error"] and sections["determinism"]["traceback"]
    assert sections["paper_setting"]["status"] == _expected_status()["paper_setting"]
    if sections["paper_setting"]["status"] == "ok":
        _check_ok("paper_setting", sections["paper_setting"])
    for name in set(SECTIONS) - {"determinism", "paper_setting"}:
        assert sections[name]["status"] == "skipped" and "not selected" in sections[name]["error"], name
    rows = _summary_rows((out / "gpu.md").read_text())
    assert set(rows) == set(SECTIONS) and rows["determinism"][1] == "failed"
    assert "forced failure" in rows["determinism"][4]
