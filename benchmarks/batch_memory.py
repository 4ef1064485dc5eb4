"""The attack's working memory at 224x224 against its budget (``batch_memory_mb``).

At 224x224 one image of torchvision's ResNet-18 needs about 10 MiB of
activations, so the attack's default batch of 8,192 candidates would need about
80 GiB. The stages cap their batches with :func:`onepixel.memory.budgeted_batch`.
For each budget, a fresh process builds the model (fresh weights, fixed seed),
caps the attack's batch to the budget and attacks a few random 224x224 images
with a small DE budget, and reports:

* ``batch``: candidates per forward pass after the cap;
* ``estimate MiB``: the batch times the estimated memory per image;
* ``working MiB``: the process's peak resident memory during the attack above
  its resident memory before (``VmHWM`` after a reset through
  ``/proc/self/clear_refs``), with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed so
  that freed activations go back to the system (as in ``attack_memory.py``);
* ``working / budget``: at most 1 when the cap holds.

    PYTHONPATH=src python benchmarks/batch_memory.py [--budgets 128 512] [--model resnet18] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from attack_memory import FIXED_MMAP_THRESHOLD, _peak_bytes, _reset_peak, _rss_bytes

MIB = 2**20


def measure(budget_mb: int, model_name: str, size: int, images: int, population: int) -> dict[str, float]:
    """Attack ``images`` random images with the batch capped to ``budget_mb``; memory figures in bytes."""
    from onepixel.attack import OnePixelAttack
    from onepixel.memory import budgeted_batch, forward_bytes_per_image
    from onepixel.models.sources import build_source_model

    model = build_source_model(model_name, {"torchvision": model_name}, 10, 3, size, seed=0).eval()
    per_image = forward_bytes_per_image(model, (3, size, size))
    batch = budgeted_batch(model, (3, size, size), 8192, budget_mb, "attack.batch_size")
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (images, 3, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (images,), generator=gen)
    attack = OnePixelAttack(model, population=population, generations=1, batch_size=batch, seed=0)
    attack.run(pixels[:1], labels[:1])  # warm-up: allocator, kernels
    precise = _reset_peak()
    before = _rss_bytes() if precise else _peak_bytes(False)
    start = time.perf_counter()
    attack.run(pixels, labels)
    seconds = time.perf_counter() - start
    return {
        "budget": budget_mb * MIB,
        "batch": batch,
        "per_image": per_image,
        "working": max(_peak_bytes(precise) - before, 0),
        "seconds": seconds,
        "candidates": attack.last_stats["candidates"],
        "precise": precise,
    }


def _in_subprocess(budget_mb: int, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": FIXED_MMAP_THRESHOLD}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(budget_mb)]
    cmd += ["--model", args.model, "--size", str(args.size), "--images", str(args.images)]
    cmd += ["--population", str(args.population), "--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict[str, float]]) -> float:
    """Print the table; return the largest working memory / budget."""
    print(
        f"{'budget MiB':>10} {'batch':>6} {'estimate MiB':>13} {'working MiB':>12} {'working/budget':>15} {'cand/s':>7}"
    )
    for row in rows:
        print(
            f"{row['budget'] / MIB:10.0f} {row['batch']:6d} {row['batch'] * row['per_image'] / MIB:13.1f} "
            f"{row['working'] / MIB:12.1f} {row['working'] / row['budget']:15.2f} "
            f"{row['candidates'] / row['seconds']:7.0f}"
        )
    worst = max(row["working"] / row["budget"] for row in rows)
    uncapped = 8192 * rows[0]["per_image"] / MIB
    print(
        f"largest working memory / budget: {worst:.2f}; the uncapped default batch (8192) would need about "
        f"{uncapped:,.0f} MiB; peak {'VmHWM' if rows[0]['precise'] else 'ru_maxrss'}"
    )
    return worst


def main(argv: list[str] | None = None) -> float | None:
    """Run the benchmark; return the largest working-memory / budget ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=int, nargs="+", default=[128, 512], help="batch_memory_mb values")
    parser.add_argument("--model", default="resnet18", help="a torchvision classification model")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.model, args.size, args.images, args.population)))
        return None
    print(
        f"{args.model} at 3x{args.size}x{args.size}, {args.images} images, population {args.population}, "
        f"1 generation, threads={args.threads}"
    )
    return report([_in_subprocess(budget, args) for budget in args.budgets])


if __name__ == "__main__":
    main()
