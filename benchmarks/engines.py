"""The stages' engines side by side: dense against incremental, in the stages' own calls.

``benchmarks/incremental.py`` measures the evaluator on one image's large batch.
The stages call it differently: DE evaluates ``population`` candidates per image
per generation for many images at once (one cached clean image each), the
exhaustive sweep ``H * W * colours`` per image, the vulnerability maps one
position per evaluation for every attacked image. This script runs each of them
end to end with ``engine="dense"`` and ``engine="incremental"`` on the same
images, interleaved over ``--rounds`` rounds (the order alternates, the best of
each is kept), and prints per model and workload:

- the evaluations per second of each engine and their ratio;
- what ``engine="auto"`` picks for that call (:func:`onepixel.engine.choose_engine`
  at the stage's candidates of one image per call), and whether that is the
  faster one;
- whether the two engines' results agree (DE: the same successes, pixels and
  colours; the sweep: the same fooling counts and maps; the vulnerability maps:
  the same fooled positions), and the largest difference of a probability.

Models have fresh weights; the images are real CIFAR-10 test images of
``../shared/data/cifar10-subset`` when present (random ones otherwise), and the
labels are the model's own predictions, so that no attack stops at its first
query.

    PYTHONPATH=src python benchmarks/engines.py --quick
    PYTHONPATH=src python benchmarks/engines.py --models lenet resnet20 allconv --rounds 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from onepixel.analysis.locality import shift_engine
from onepixel.analysis.vulnerability import all_shifts, vulnerability_maps
from onepixel.attack.de import OnePixelAttack
from onepixel.attack.exhaustive import ExhaustiveAttack
from onepixel.engine import EngineChoice
from onepixel.scoring import as_classifier

SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"
DEFAULT_MODELS = ["lenet", "resnet20", "allconv", "nin"]
WORKLOADS = ("de", "sweep", "vulnerability")


def load_images(n: int, size: int) -> tuple[torch.Tensor, str]:
    """``(n, 3, size, size)`` uint8 images and where they come from."""
    if size == 32 and SUBSET.is_dir():
        from onepixel.data.cifar10 import read_cifar10_root

        _train, test = read_cifar10_root(SUBSET, log=None)
        return torch.from_numpy(np.ascontiguousarray(test["image"].values[:n])), "CIFAR-10 subset"
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8), "random"


def make_model(name: str, size: int) -> nn.Module:
    from onepixel.models import build_model

    torch.manual_seed(0)
    return build_model(name, num_classes=10, in_channels=3, image_size=size).eval()


@dataclass
class Workload:
    """One stage's call: ``run(engine)`` returns what it computed; ``evaluations`` per call."""

    name: str
    evaluations: int
    run: Callable[[str], Any]
    agree: Callable[[Any, Any], tuple[bool, float]]
    auto: EngineChoice  #: what ``engine="auto"`` picks for this call


def de_workload(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, population: int, generations: int):
    def run(engine: str) -> Any:
        return OnePixelAttack(model, population=population, generations=generations, seed=0, engine=engine).run(
            images, labels
        )

    def agree(a: Any, b: Any) -> tuple[bool, float]:
        same = all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("success", "pixel_x", "pixel_y", "color"))
        return same, float((a.prob_adv - b.prob_adv).abs().max())

    evaluations = int(run("dense").queries.sum())
    auto = OnePixelAttack(model, population=population, engine="auto").choose_engine(tuple(images.shape[1:]))
    return Workload(f"DE {population}x{generations}", evaluations, run, agree, auto)


def sweep_workload(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    def run(engine: str) -> Any:
        return ExhaustiveAttack(model, colors="corners", engine=engine).run(images, labels)

    def agree(a: Any, b: Any) -> tuple[bool, float]:
        same = torch.equal(a.n_fooling, b.n_fooling) and torch.equal(a.fooled_map, b.fooled_map)
        return same, float((a.min_true_prob - b.min_true_prob).abs().max())

    h, w = images.shape[-2:]
    auto = ExhaustiveAttack(model, colors="corners", engine="auto").choose_engine(tuple(images.shape[1:]))
    return Workload("sweep, 8 colours", images.shape[0] * h * w * 8, run, agree, auto)


def vulnerability_workload(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    n, c, h, w = images.shape
    gen = np.random.default_rng(0)
    px, py = gen.integers(0, w, n), gen.integers(0, h, n)
    colors = gen.integers(0, 256, (n, c)).astype(np.uint8)

    def run(engine: str) -> Any:
        return vulnerability_maps(model, images, labels.numpy(), px, py, colors, batch_size=1024, engine=engine)

    def agree(a: Any, b: Any) -> tuple[bool, float]:
        return bool(np.array_equal(a[0], b[0])), float(np.nanmax(np.abs(a[1] - b[1])))

    jobs, _position = all_shifts(px[:, None], py[:, None], h, w)
    auto = shift_engine("auto", as_classifier(model), (c, h, w), 1, jobs, 1024)
    return Workload("vulnerability maps", n * h * w, run, agree, auto)


def make_workload(key: str, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, args: Any) -> Workload:
    """The workload ``key`` of :data:`WORKLOADS` with the sizes of the command line."""
    if key == "de":
        n = args.images
        return de_workload(model, images[:n], labels[:n], args.population, args.generations)
    if key == "sweep":
        return sweep_workload(model, images[: args.sweep_images], labels[: args.sweep_images])
    return vulnerability_workload(model, images[: args.images], labels[: args.images])


def timed(run: Callable[[str], Any], engine: str) -> tuple[float, Any]:
    start = time.perf_counter()
    out = run(engine)
    return time.perf_counter() - start, out


def bench(workload: Workload, rounds: int) -> tuple[dict[str, float], bool, float]:
    """Best evaluations/s of each engine over interleaved rounds; whether the results agree, and by how much."""
    best = {"dense": 0.0, "incremental": 0.0}
    results: dict[str, Any] = {}
    for r in range(rounds):
        order = ["dense", "incremental"] if r % 2 == 0 else ["incremental", "dense"]
        for engine in order:
            seconds, results[engine] = timed(workload.run, engine)
            best[engine] = max(best[engine], workload.evaluations / seconds)
    same, diff = workload.agree(results["dense"], results["incremental"])
    return best, same, diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help=f"registry names (default: {DEFAULT_MODELS})")
    parser.add_argument("--size", type=int, default=32, help="image size (3 x size x size)")
    parser.add_argument("--images", type=int, default=20, help="images for DE and the vulnerability maps")
    parser.add_argument("--sweep-images", type=int, default=2, help="images for the sweep (8 H W queries each)")
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--generations", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (the best is kept)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--quick", action="store_true", help="lenet at 16x16, tiny workloads, one round")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.models = args.models or ["lenet"]
        args.size, args.images, args.sweep_images, args.rounds = 16, 3, 1, 1
        args.population, args.generations = 10, 2
    models = args.models or DEFAULT_MODELS
    images, source = load_images(max(args.images, args.sweep_images), args.size)
    print(
        f"threads={torch.get_num_threads()} rounds={args.rounds} images: {source}, 3x{args.size}x{args.size}; "
        f"fresh weights, labels = the model's predictions\n"
    )
    print(
        "| model | workload | evaluations | dense eval/s | incremental eval/s | ratio | auto picks | same results | max prob. diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in models:
        model = make_model(name, args.size)
        with torch.inference_mode():
            labels = model(images.float() / 255).argmax(1)
        for key in args.workloads:
            workload = make_workload(key, model, images, labels, args)
            best, same, diff = bench(workload, args.rounds)
            ratio = best["incremental"] / best["dense"]
            faster = "incremental" if ratio >= 1 else "dense"
            verdict = workload.auto.engine + (" (faster)" if workload.auto.engine == faster else " (slower)")
            print(
                f"| {name} | {workload.name} | {workload.evaluations:,} | {best['dense']:.0f} | "
                f"{best['incremental']:.0f} | {ratio:.2f} | {verdict} | {'yes' if same else 'NO'} | {diff:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
