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

``--reference FILE`` times another copy of the engine module (e.g. the last
commit's, to check that a change of ``onepixel/attack/de.py`` costs no speed)
against the current one on the same workload, alternating which runs first in
each round, and prints both best rates and their ratio:

    git show HEAD:src/onepixel/attack/de.py > /tmp/de_ref.py
    PYTHONPATH=src python benchmarks/attack_throughput.py --reference /tmp/de_ref.py --rounds 6
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from onepixel.attack import de


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


@dataclass
class Workload:
    """A full-budget targeted attack workload: the images, their labels and never-predicted targets."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    slots: int
    plain_x: torch.Tensor  #: what one of the attack's forward batches holds
    forwards: int  #: forward passes of one attack run


def workload(
    channels: int, size: int, args: argparse.Namespace, device: torch.device, model: nn.Module | None = None
) -> Workload:
    """The benchmark's images and model (default: ``make_model(args.model, ...)``) on ``device``."""
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
    # the plain batch holds what the attack's batches hold: copies of the images in flight (the
    # input data changes a CPU's speed: random noise runs ~15 % slower than such batches)
    rows = slots * pop if batch >= pop else batch
    x = imgs[:slots].to(device).float().div(255).repeat_interleave(pop, 0)[:rows].contiguous()
    forwards = -(-images * pop * (args.generations + 1) // x.shape[0])
    return Workload(model, imgs, labels, targets, slots, x, forwards)


def make_attack(engine: object, work: Workload, args: argparse.Namespace, device: torch.device) -> object:
    """``engine.OnePixelAttack`` for the workload, warmed up (shapes, allocator)."""
    attack = engine.OnePixelAttack(
        work.model,
        population=args.population,
        generations=args.generations,
        batch_size=args.batch_size,
        targeted=True,
        seed=0,
        device=device,
    )
    s = work.slots
    attack.run(work.images[:s], work.labels[:s], work.targets[:s])
    return attack


def attack_rate(attack: object, work: Workload, device: torch.device) -> float:
    """Candidates/s of one full attack run."""
    attack.run(work.images, work.labels, work.targets)
    _sync(device)
    return attack.last_stats["candidates_per_s"]


def bench(
    channels: int, size: int, args: argparse.Namespace, device: torch.device, model: nn.Module | None = None
) -> tuple[float, float, int, dict[str, float]]:
    """Best plain forward rate, best attack rate, forward batch and the attack's last stats.

    ``model`` (default: ``make_model(args.model, ...)``) maps ``(N, channels, size, size)``
    images to 10 logits.
    """
    work = workload(channels, size, args, device, model)
    attack = make_attack(de, work, args, device)
    plain_rate(work.model, work.plain_x, 1)
    plains, attacks = [], []
    for _ in range(args.rounds):
        plains.append(plain_rate(work.model, work.plain_x, work.forwards))
        attacks.append(attack_rate(attack, work, device))
    return max(plains), max(attacks), work.plain_x.shape[0], attack.last_stats


def load_engine(path: str) -> object:
    """The engine module in file ``path`` (a copy of ``onepixel/attack/de.py``)."""
    spec = importlib.util.spec_from_file_location("de_reference", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compare_engines(
    channels: int, size: int, args: argparse.Namespace, device: torch.device, reference: object
) -> tuple[float, float, list[tuple[float, float]]]:
    """Best candidates/s of the current engine and of ``reference`` on the same workload, and every round's
    pair; the two alternate which runs first, so a slow spell of a busy machine hits both alike."""
    work = workload(channels, size, args, device)
    current, ref = make_attack(de, work, args, device), make_attack(reference, work, args, device)
    rounds = []
    for r in range(args.rounds):
        if r % 2:
            ref_rate = attack_rate(ref, work, device)
            cur_rate = attack_rate(current, work, device)
        else:
            cur_rate = attack_rate(current, work, device)
            ref_rate = attack_rate(ref, work, device)
        rounds.append((cur_rate, ref_rate))
    return max(c for c, _ in rounds), max(r for _, r in rounds), rounds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--population", type=int, default=100)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--images", type=int, default=20, help="images attacked per input size")
    parser.add_argument("--width", type=int, default=8, help="CNN width (first conv channels)")
    parser.add_argument("--model", default="small", help="small (the CNN above) or a registry name, e.g. lenet")
    parser.add_argument(
        "--inputs",
        nargs="+",
        default=["1x8", "3x32"],
        metavar="CxS",
        help="input shapes as channels x side (default: 1x8 3x32)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved plain/attack timing rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument(
        "--reference", metavar="FILE", help="time this copy of onepixel/attack/de.py against the current engine"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} model={args.model} batch_size={args.batch_size} "
        f"population={args.population} generations={args.generations} images={args.images} width={args.width}"
    )
    if args.reference:
        reference = load_engine(args.reference)
        print(f"{'input':>8} {'current cand/s':>14} {'reference':>14} {'ratio':>6}")
        for shape in args.inputs:
            channels, size = (int(v) for v in shape.lower().split("x"))
            cur, ref, rounds = compare_engines(channels, size, args, device, reference)
            print(
                f"{f'{channels}x{size}x{size}':>8} {cur:14.0f} {ref:14.0f} {cur / ref:6.3f}   (rounds: "
                + ", ".join(f"{c:.0f}/{r:.0f}" for c, r in rounds)
                + ")",
                flush=True,
            )
        return
    print(f"{'input':>8} {'batch':>6} {'forward img/s':>14} {'attack cand/s':>14} {'ratio':>6}")
    for shape in args.inputs:
        channels, size = (int(v) for v in shape.lower().split("x"))
        plain, rate, batch, stats = bench(channels, size, args, device)
        print(
            f"{f'{channels}x{size}x{size}':>8} {batch:6d} {plain:14.0f} {rate:14.0f} {rate / plain:6.2f}"
            f"   ({stats['candidates']} candidates in {stats['seconds']:.2f} s per run)",
            flush=True,
        )


if __name__ == "__main__":
    main()
