"""Peak memory of OnePixelAttack over many images: it must not grow with N beyond the result arrays.

For each image count (default 1,000 and 10,000) a fresh process builds a tiny
CNN and N random images, then runs the attack with a tiny budget (population 4,
1 generation, so the run is about the engine's bookkeeping, not the search). It
reports:

* ``result MiB``: the size of the returned arrays (one adversarial image per input
  image, probabilities, pixels...), which necessarily grows with N;
* ``peak MiB``: the process's peak resident memory during ``run`` above its
  resident memory just before (Linux: ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; elsewhere ``ru_maxrss``, less precise);
* ``working MiB``: peak minus result, i.e. what the engine needs besides its
  output (candidate buffer, populations, model activations); bounded means
  this stays flat;
* ``traced MiB``: the peak of Python/numpy allocations seen by ``tracemalloc``
  (torch's CPU tensors are not traced);
* on CUDA, ``device MiB``: ``torch.cuda.max_memory_allocated`` (the images stay on
  the host and enter the device as they enter the batch).

Finally it prints the ratio of the working memory of the largest N to the smallest.

Each size runs twice: with the C library's default allocator settings (what a
job gets), and with a fixed ``MALLOC_MMAP_THRESHOLD_`` (128 KiB), which stops
glibc from serving the engine's large temporaries (the forward pass's
activations) from a heap that fragments, so the peak shows the engine's own
arrays. With the default settings the working memory still drifts by some MiB
between runs (heap fragmentation, not arrays kept).

    PYTHONPATH=src python benchmarks/attack_memory.py [--sizes 1000 10000] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

MIB = 2**20


def tiny_cnn(channels: int, classes: int = 10) -> nn.Module:
    """conv(stride 2)-relu-adaptive pool-linear: input size agnostic, fast."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    )


def _rss_bytes() -> int:
    """Current resident memory of this process (0 when it cannot be read)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes(precise: bool) -> int:
    if precise:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def result_bytes(result) -> int:
    """Bytes held by an AttackResult's tensors."""
    return sum(t.numel() * t.element_size() for t in vars(result).values() if isinstance(t, torch.Tensor))


def measure(
    n: int,
    channels: int = 3,
    size: int = 32,
    population: int = 4,
    generations: int = 1,
    batch_size: int = 1024,
    device: str = "cpu",
) -> dict[str, float]:
    """Attack ``n`` random images in this process; return the memory figures (bytes) and timings."""
    from onepixel.attack import OnePixelAttack

    dev = torch.device(device)
    model = tiny_cnn(channels).to(dev).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    attack = OnePixelAttack(
        model, population=population, generations=generations, batch_size=batch_size, seed=0, device=dev
    )
    attack.run(images[:2], labels[:2])  # warm-up: allocator, kernels
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    tracemalloc.start()
    precise = _reset_peak()
    before = _rss_bytes() if precise else _peak_bytes(False)
    start = time.perf_counter()
    result = attack.run(images, labels)
    seconds = time.perf_counter() - start
    peak = _peak_bytes(precise) - before
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {
        "n": n,
        "result": result_bytes(result),
        "peak": max(peak, 0),
        "traced": traced,
        "seconds": seconds,
        "candidates": attack.last_stats["candidates"],
        "precise": precise,
    }
    if dev.type == "cuda":
        out["device"] = torch.cuda.max_memory_allocated(dev)
    return out


#: glibc: large blocks always come from mmap (returned at free), see the module docstring
FIXED_MMAP_THRESHOLD = "131072"


def measure_in_subprocess(n: int, args: argparse.Namespace, fixed_mmap: bool = False) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter (so one N's peak does not hide another's).

    ``fixed_mmap``: run it with ``MALLOC_MMAP_THRESHOLD_`` fixed (see the module docstring).
    """
    env = dict(os.environ)
    if fixed_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = FIXED_MMAP_THRESHOLD
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(n),
        "--channels",
        str(args.channels),
        "--size",
        str(args.size),
        "--population",
        str(args.population),
        "--generations",
        str(args.generations),
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict[str, float]], title: str = "") -> float:
    """Print the table; return working memory (peak - result) of the largest N over that of the smallest."""
    cuda = "device" in rows[0]
    if title:
        print(title)
    print(
        f"{'images':>8} {'result MiB':>11} {'peak MiB':>9} {'working MiB':>12} {'traced MiB':>11}"
        + (f" {'device MiB':>11}" if cuda else "")
        + f" {'cand/s':>9}"
    )
    for row in rows:
        working = row["peak"] - row["result"]
        print(
            f"{row['n']:8d} {row['result'] / MIB:11.1f} {row['peak'] / MIB:9.1f} {working / MIB:12.1f} "
            f"{row['traced'] / MIB:11.1f}"
            + (f" {row['device'] / MIB:11.1f}" if cuda else "")
            + f" {row['candidates'] / row['seconds']:9.0f}"
        )
    small, big = rows[0], rows[-1]
    # a floor of 1 MiB keeps the ratio meaningful when the small run needs almost nothing besides its result
    ratio = max(big["peak"] - big["result"], MIB) / max(small["peak"] - small["result"], MIB)
    print(
        f"working memory {big['n']} / {small['n']} images: {ratio:.2f}x "
        f"(result arrays {big['result'] / max(small['result'], 1):.1f}x); "
        f"peak {'VmHWM' if small['precise'] else 'ru_maxrss'}"
    )
    return ratio


def main(argv=None) -> dict[str, float] | None:
    """Run the benchmark; return the working-memory ratio (largest N / smallest) per allocator setting."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="image counts, smallest first")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--generations", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(
            json.dumps(
                measure(
                    args.child,
                    args.channels,
                    args.size,
                    args.population,
                    args.generations,
                    args.batch_size,
                    args.device,
                )
            )
        )
        return None
    print(
        f"device={args.device} threads={args.threads} images={args.channels}x{args.size}x{args.size} "
        f"population={args.population} generations={args.generations} batch_size={args.batch_size}"
    )
    ratios = {}
    for fixed, title in (
        (False, "default allocator settings:"),
        (True, f"MALLOC_MMAP_THRESHOLD_={FIXED_MMAP_THRESHOLD} (the engine's own arrays):"),
    ):
        rows = [measure_in_subprocess(n, args, fixed) for n in sorted(args.sizes)]
        ratios["fixed_mmap" if fixed else "default"] = report(rows, title)
    return ratios


if __name__ == "__main__":
    main()
