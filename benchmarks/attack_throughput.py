"""Candidate throughput of OnePixelAttack vs the model's plain forward pass.

For a small CNN on 1x8x8 and 3x32x32 inputs, prints side by side: the plain
forward rate (images/s) of the model on a prebuilt batch of ``--batch-size``
images (copies of the attacked images, as in the attack's batches), the attack's candidate evaluations/s at the same batch size (building
candidates, DE bookkeeping, selection, final re-evaluation all included), and
their ratio. Plain and attack timings are interleaved over ``--rounds`` rounds
and the best of each is used (robust on a shared, busy machine). The attacked
class is one the model never predicts, so every image uses its full budget
(no early stop, full batches). Runs on the CPU in well under a minute:

    PYTHONPATH=src python benchmarks/attack_throughput.py [--device cuda] [--batch-size 1000]

``--model lenet`` (or any name of ``onepixel models``) measures a model of the
registry (fresh weights) instead of the small CNN, e.g. the workflow's setting:

    PYTHONPATH=src python benchmarks/attack_throughput.py --model lenet --batch-size 8192 --population 400
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from onepixel.attack import OnePixelAttack


def small_cnn(channels: int, classes: int = 10, width: int = 8) -> nn.Module:
    """conv-relu-conv-relu-maxpool-conv-relu-avgpool(2)-linear; input size agnostic."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * width, classes),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_rate(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    """Images/s of ``calls`` forward passes of ``model(x)`` (inference mode)."""
    with torch.inference_mode():
        _sync(x.device)
        start = time.perf_counter()
        for _ in range(calls):
            model(x)
        _sync(x.device)
        return calls * x.shape[0] / (time.perf_counter() - start)


def make_model(name: str, channels: int, size: int, width: int) -> nn.Module:
    """The small CNN (``name == "small"``) or a registry model with fresh (seeded) weights."""
    if name == "small":
        return small_cnn(channels, width=width)
    from onepixel.models import build_model

    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=channels, image_size=size)


def bench(channels, size, args, device, model=None):
    """Best plain forward rate, best attack rate, forward batch and the attack's last stats.

    ``model`` (default: ``make_model(args.model, ...)``) maps ``(N, channels, size, size)``
    images to 10 logits.
    """
    if model is None:
        model = make_model(getattr(args, "model", "small"), channels, size, args.width)
    model = model.to(device).eval()
    batch, pop = args.batch_size, args.population
    slots = max(1, batch // pop)
    images = max(args.images, slots)
    gen = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (images, channels, size, size), generator=gen, dtype=torch.uint8)
    with torch.inference_mode():
        labels = model(imgs.to(device).float() / 255).argmax(1).cpu()
        counts = torch.bincount(labels, minlength=10)
    targets = torch.full_like(labels, int(counts.argmin()))  # never predicted -> full budget
    if counts.min() > 0:
        print("warning: every class is predicted; some images may stop early")
    attack = OnePixelAttack(model, population=pop, generations=args.generations, batch_size=batch,
                            targeted=True, seed=0, device=device)
    # the plain batch holds what the attack's batches hold: copies of the images in flight (the
    # input data changes a CPU's speed: random noise runs ~15 % slower than such batches)
    rows = slots * pop if batch >= pop else batch
    x = imgs[:slots].to(device).float().div(255).repeat_interleave(pop, 0)[:rows].contiguous()
    forwards = -(-images * pop * (args.generations + 1) // x.shape[0])
    attack.run(imgs[:slots], labels[:slots], targets[:slots])  # warm-up (shapes, allocator)
    plain_rate(model, x, 1)
    plains, attacks = [], []
    for _ in range(args.rounds):
        plains.append(plain_rate(model, x, forwards))
        attack.run(imgs, labels, targets)
        _sync(device)
        attacks.append(attack.last_stats["candidates_per_s"])
    return max(plains), max(attacks), x.shape[0], attack.last_stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--images", type=int, default=20, help="images attacked per input size")
    parser.add_argument("--width", type=int, default=8, help="CNN width (first conv channels)")
    parser.add_argument("--model", default="small", help="small (the CNN above) or a registry name, e.g. lenet")
    parser.add_argument("--inputs", nargs="+", default=["1x8", "3x32"], metavar="CxS",
                        help="input shapes as channels x side (default: 1x8 3x32)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved plain/attack timing rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={torch.get_num_threads()} model={args.model} batch_size={args.batch_size} "
          f"population={args.population} generations={args.generations} images={args.images} width={args.width}")
    print(f"{'input':>8} {'batch':>6} {'forward img/s':>14} {'attack cand/s':>14} {'ratio':>6}")
    for shape in args.inputs:
        channels, size = (int(v) for v in shape.lower().split("x"))
        plain, rate, batch, stats = bench(channels, size, args, device)
        print(f"{f'{channels}x{size}x{size}':>8} {batch:6d} {plain:14.0f} {rate:14.0f} {rate / plain:6.2f}"
              f"   ({stats['candidates']} candidates in {stats['seconds']:.2f} s per run)", flush=True)


if __name__ == "__main__":
    main()
