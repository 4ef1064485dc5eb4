"""A workflow attack job on a slow stand-in model: the progress and resume tests run it as a script.

    python tests/slow_job.py LOG CHECKPOINT TEST OUT CONFIG_JSON DELAY

runs the ``attack`` stage (shard 0) as a workflow job does, its stdout and stderr
in the log file LOG (:func:`onepixel.jobs.log_to`), with the checkpoint's model
sleeping DELAY seconds in every forward pass, and the partial file written after
every finished image (``PARTIAL_EVERY_S = 0``). Set ``ONEPIXEL_PROGRESS_S`` for
frequent progress lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def start_slow_attack(toy: Path, cfg: dict, delay: float, log: Path, out: Path) -> subprocess.Popen:
    """This script in a new process: the attack of the toy LeNet (conftest's ``toy``) with ``cfg``,
    a forward pass taking ``delay`` s more, the log in ``log``, a progress line every 0.05 s."""
    env = {**os.environ, "ONEPIXEL_PROGRESS_S": "0.05"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    config = json.dumps({"attack": cfg, "device": "cpu"})
    args = [
        sys.executable,
        __file__,
        str(log),
        str(toy / "lenet.pt"),
        str(toy / "test.nc"),
        str(out),
        config,
        str(delay),
    ]
    return subprocess.Popen(args, cwd=log.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Slow(nn.Module):
    """``inner``, sleeping ``delay`` seconds in every forward pass (same outputs)."""

    def __init__(self, inner: nn.Module, delay: float) -> None:
        super().__init__()
        self.inner, self.delay = inner, delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.inner(x)


def main() -> None:
    log, checkpoint, test, out, config, delay = sys.argv[1:]
    torch.set_num_threads(1)  # as the tests' own runs (conftest), so the floats agree
    import onepixel.attack.stage as stage
    import onepixel.models

    load = onepixel.models.load_checkpoint

    def slow_load(*args, **kwargs):
        model, meta = load(*args, **kwargs)
        return Slow(model, float(delay)), meta

    onepixel.models.load_checkpoint = slow_load
    stage.PARTIAL_EVERY_S = 0.0
    from onepixel.jobs import log_to
    from onepixel.stages import run_stage

    with log_to(log):
        run_stage("attack", {"checkpoint": checkpoint, "test": test}, {"out": out}, json.loads(config), {"shard": 0})


if __name__ == "__main__":
    main()
