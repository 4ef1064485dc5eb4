"""Candidates/s of the incremental evaluator (onepixel.incremental) against the plain forward pass.

For each model and input size: one clean image, ``--batch`` one-pixel candidates at
random positions with random 8-bit colours (what the DE engine evaluates), timed
both ways at the same batch, interleaved over ``--rounds`` rounds (the order
alternates; the best round of each is kept, robust on a shared machine):

- plain: ``model(apply_pixels(images, xs, ys, colors))``, as the attack does;
- incremental: ``IncrementalEvaluator(model, image).logits(xs, ys, colors)``
  (the clean image's activations are cached once per image, outside the timing:
  an attack evaluates thousands of candidates per image).

It prints a Markdown table: both rates, their ratio, the cost model's ceiling
(:func:`onepixel.incremental.incremental_speedup_ceiling`: convolution and linear
MACs, plain over incremental, averaged over positions), the largest difference
of the logits (relative to their scale) and the peak memory of one batch each
way (the rise of the process's peak resident memory over what it held before the
call, ``VmHWM`` after a reset through ``/proc/self/clear_refs``; "n/a" where
Linux does not allow it). Where the ratio is below the target (1.5x ResNet-20 at
32x32, 2.5x ResNet-18 and 6x VGG16 at 224x224) it prints the per-layer profile
that explains it.

Images: real CIFAR-10 test images of ``../shared/data/cifar10-subset`` for 32x32
when present (random ones otherwise), scikit-image's bundled photographs
(astronaut, chelsea, coffee) resized for 224x224. Models have fresh weights
(``onepixel.models.build_model``; ``tv-<name>``: torchvision's, ``weights=None``).

    PYTHONPATH=src python benchmarks/incremental.py --quick
    PYTHONPATH=src python benchmarks/incremental.py --models resnet20:32 tv-resnet18:224 tv-vgg16:224 --rounds 3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from onepixel.data.dataset import apply_pixels
from onepixel.incremental import IncrementalEvaluator, incremental_speedup_ceiling

SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"
DEFAULT_MODELS = ["resnet20:32", "lenet:32", "densenet:32", "tv-resnet18:224", "tv-vgg16:224", "tv-alexnet:224"]
QUICK_MODELS = ["resnet20:32", "lenet:32", "tv-alexnet:224"]
#: candidates/s ratios the evaluator is meant to reach
TARGETS = {("resnet20", 32): 1.5, ("tv-resnet18", 224): 2.5, ("tv-vgg16", 224): 6.0}


def load_image(size: int, index: int) -> tuple[torch.Tensor, str]:
    """One ``(3, size, size)`` float image in [0, 1] and where it comes from."""
    if size == 32 and SUBSET.is_dir():
        from onepixel.data.cifar10 import read_cifar10_root

        _train, test = read_cifar10_root(SUBSET, log=None)
        images = test["image"].values
        return torch.from_numpy(np.ascontiguousarray(images[index % len(images)])).float() / 255, "CIFAR-10 subset"
    if size >= 64:
        from skimage import data
        from skimage.transform import resize

        photo = [data.astronaut, data.chelsea, data.coffee][index % 3]()
        small = resize(photo, (size, size), anti_aliasing=True).astype(np.float32)
        return torch.from_numpy(small).permute(2, 0, 1).contiguous(), "scikit-image photographs"
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(index)), "random"


def make_model(name: str, size: int) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("tv-"):
        import torchvision

        return getattr(torchvision.models, name[3:])(weights=None).eval()
    from onepixel.models import build_model

    return build_model(name, num_classes=10, in_channels=3, image_size=size).eval()


def candidates(batch: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random one-pixel candidates: columns, rows ``(B, 1)``, colours ``(B, 1, 3)`` (8-bit values / 255)."""
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randint(0, size, (batch, 1), generator=gen)
    ys = torch.randint(0, size, (batch, 1), generator=gen)
    colors = torch.randint(0, 256, (batch, 1, 3), generator=gen).float() / 255
    return xs, ys, colors


def mmap_threshold(size: int) -> None:
    """glibc's threshold (bytes) above which blocks are mapped alone and returned to the system when freed
    (``mallopt(M_MMAP_THRESHOLD)``; nothing elsewhere). 64 KiB while measuring memory, so that what a call
    frees leaves the resident memory and the next call's peak starts from what is really held; 32 MiB (the
    largest value glibc's own adaptive threshold takes) while timing, as freed pages are reused without
    page faults."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, size)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def peak_mib(fn) -> float:
    """Rise of the peak resident memory during ``fn()``, MiB (NaN where the peak cannot be reset)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
    except OSError:
        fn()
        return float("nan")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(key)


@dataclass
class Row:
    model: str
    size: int
    batch: int
    plain: float
    incremental: float
    ceiling: float
    error: float
    plain_mib: float
    incremental_mib: float
    evaluator: IncrementalEvaluator

    @property
    def ratio(self) -> float:
        return self.incremental / self.plain


def bench(name: str, size: int, batch: int, rounds: int, seed: int) -> Row:
    model = make_model(name, size)
    image, _source = load_image(size, seed)
    evaluator = IncrementalEvaluator(model, image)
    xs, ys, colors = candidates(batch, size, seed)
    images = image[None].expand(batch, *image.shape)

    def plain() -> torch.Tensor:
        with torch.inference_mode():
            return model(apply_pixels(images, xs, ys, colors))

    def incremental() -> torch.Tensor:
        return evaluator.logits(xs, ys, colors)

    want, got = plain(), incremental()  # warm-up, and the agreement of the two
    error = float((got - want).abs().max() / want.abs().max())
    best = {"plain": 0.0, "incremental": 0.0}
    for r in range(rounds):
        order = [("plain", plain), ("incremental", incremental)]
        for key, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            best[key] = max(best[key], batch / (time.perf_counter() - start))
    mmap_threshold(64 * 1024)
    memory = peak_mib(plain), peak_mib(incremental)
    mmap_threshold(32 * 1024 * 1024)
    incremental()  # the profile of a plain call (peak_mib's reset happens before)
    ceiling = incremental_speedup_ceiling(model, (3, size, size), positions=256 if size > 64 else 1024)
    return Row(name, size, batch, best["plain"], best["incremental"], ceiling, error, *memory, evaluator)


def explain(row: Row) -> None:
    """The layers that take the most time, with their patch's area."""
    costs = row.evaluator.profile()
    total = sum(c.seconds for c in costs) or 1.0
    print(f"\nprofile of {row.model} at {row.size}x{row.size} (batch {row.batch}), nodes over 2 % of the time:\n")
    print("| node | op | patch area | dense | MACs done | ms | share |")
    print("|---|---|---|---|---|---|---|")
    for c in costs:
        if c.seconds / total >= 0.02:
            print(
                f"| {c.name} | {c.op} | {c.area_fraction:.3f} | {'yes' if c.dense else 'no'} | "
                f"{c.macs_fraction:.3f} | {1e3 * c.seconds:.1f} | {100 * c.seconds / total:.1f} % |"
            )
    dense = sum(c.seconds for c in costs if c.dense)
    print(f"\ndense nodes: {100 * dense / total:.0f} % of the time; the rest: patches and their windows\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", metavar="NAME:SIZE", help=f"default: {' '.join(DEFAULT_MODELS)}")
    parser.add_argument("--batch", type=int, default=1000, help="candidates per call at 32x32 and below")
    parser.add_argument("--batch-224", type=int, default=32, help="candidates per call above 64x64")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"{' '.join(QUICK_MODELS)}, small batches, 1 round")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mmap_threshold(32 * 1024 * 1024)
    models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    if args.quick:
        args.batch, args.batch_224, args.rounds = min(args.batch, 256), min(args.batch_224, 4), 1
    print(f"threads={torch.get_num_threads()} rounds={args.rounds} k=1, random positions and 8-bit colours\n")
    print(
        "| model | input | batch | plain cand/s | incremental cand/s | ratio | target | ceiling | max rel. diff | plain MiB | incremental MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    slow = []
    for spec in models:
        name, _, size_text = spec.partition(":")
        size = int(size_text or 32)
        batch = args.batch if size <= 64 else args.batch_224
        row = bench(name, size, batch, args.rounds, args.seed)
        target = TARGETS.get((name, size))
        print(
            f"| {name} | 3x{size}x{size} | {batch} | {row.plain:.0f} | {row.incremental:.0f} | {row.ratio:.2f} | "
            f"{'-' if target is None else f'{target:.1f}'} | {row.ceiling:.2f} | {row.error:.1e} | "
            f"{row.plain_mib:.0f} | {row.incremental_mib:.0f} |",
            flush=True,
        )
        if row.evaluator.fallback_reason:
            print(f"  ({name}: plain forward, {row.evaluator.fallback_reason})")
        if target is not None and row.ratio < target:
            slow.append(row)
    for row in slow:
        explain(row)


if __name__ == "__main__":
    main()
