"""onepixel's DE engine vs torchattacks ``OnePixel`` vs ART ``PixelAttack``: one model, one image set, one budget.

In one run: train a LeNet quickly (on the CIFAR-10 subset of ``shared/data`` when it
is there, else on the digits bundled with scikit-learn), pick the first
``--images`` correctly classified test images (``select_correct_images``, seed 0),
and attack them untargeted with one pixel, at the same population and generation
budget, with:

* ``onepixel rand1``    -- :class:`onepixel.attack.OnePixelAttack` as the workflow runs it
  (the paper's DE/rand/1, F = 0.5, no crossover; ``batch_size`` 8192 candidates);
* ``onepixel best1bin`` -- the same engine with scipy's best/1/bin, CR = 1 (the
  strategy of the two other tools, but with a fixed F = 0.5 instead of their dithered F);
* ``torchattacks``      -- ``torchattacks.OnePixel(model, pixels=1, steps=G, popsize=P, inf_batch=128)``;
  its ``popsize`` multiplies the number of genes (population = ``int(popsize / genes) * genes``),
  so ``popsize=P`` with ``P`` a multiple of the genes gives population ``P``;
* ``ART``               -- ``art.attacks.evasion.PixelAttack(classifier, th=1, es=1, max_iter=G)``
  on a ``PyTorchClassifier`` (``clip_values=(0, 1)``, the model followed by a softmax,
  as ART minimises the classifier's raw output of the class). ``es=1`` is ART's
  differential evolution (``es=0`` is CMA-ES). ART fixes the population at
  ``(400 // genes) * genes`` (400 for RGB, 399 for grey images): ``--population`` must equal
  that for the comparison to hold, and the table shows every tool's actual population.

Budgets and early-stop rules (nothing is tuned per tool):

* onepixel: initial population + at most G generations; an image stops as soon as any
  evaluated candidate is misclassified (initial population included).
* torchattacks: initial population + at most G generations (scipy-style, dithered F in
  [0.5, 1), CR = 1, random init, no polish); stops when the *best* member is
  misclassified, checked after each generation (not after the initial population).
* ART: the same scipy-style DE (Latin hypercube init, popsize fixed as above, CR = 1,
  dithered F, no polish); stops when the best member is misclassified after a generation.

Measured per tool, each in its own fresh process (sequentially, same thread count):
wall time of the attack call; model evaluations (images through the model, counted by a
wrapper: candidates plus each tool's own checks); evaluations/s; successes (the harness
re-evaluates every returned image: misclassified and at most one pixel changed) and
successes/s of wall time; success rate; peak memory: on the CPU the peak resident set
during the attack minus the resident set before it (the peak is reset first through
``/proc/self/clear_refs``; elsewhere ``ru_maxrss``), on a GPU ``torch.cuda.max_memory_allocated``
minus the memory allocated before; the mean forward batch; and evaluations/s divided by the
model's plain batched forward throughput at the tool's own forward batch size
(``plain_rate`` of ``attack_throughput.py``; for onepixel ``(batch_size // population) *
population`` candidates, for the others their default 128).

    PYTHONPATH=src python benchmarks/compare_tools.py            # a few minutes on a 2-core CPU
    PYTHONPATH=src python benchmarks/compare_tools.py --quick    # < 60 s (CI smoke test)
    PYTHONPATH=src python benchmarks/compare_tools.py --device cuda --json results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_throughput import bench, plain_rate

TOOLS = ("onepixel rand1", "onepixel best1bin", "torchattacks", "ART")
COLUMNS = (
    "tool",
    "population",
    "max gens",
    "evals",
    "wall s",
    "evals/s",
    "successes",
    "succ/s",
    "success %",
    "peak MiB",
    "fwd batch",
    "mean batch",
    "plain img/s",
    "evals/s / plain",
)
#: where the CIFAR-10 subset lives when the repository sits beside shared/
DEFAULT_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset" / "cifar-10-batches-py"


class Counter(nn.Module):
    """The model, counting the images it is called on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += int(x.shape[0])
        self.calls += 1
        return self.model(x)


# ---------------------------------------------------------------------------
# setup (parent process): data, model, images
# ---------------------------------------------------------------------------
def load_data(name: str, subset: Path):
    """``(train, test)`` xarray data sets, or ``None`` when the CIFAR-10 subset is asked for but absent."""
    from onepixel.data import load_digits_split, read_cifar10_batches

    if name == "auto":
        name = "cifar10-subset" if subset.is_dir() else "digits"
    if name == "digits":
        return ("digits", *load_digits_split())
    if not subset.is_dir():
        return None
    return ("cifar10-subset", *read_cifar10_batches(subset))


def prepare(args, work: Path) -> dict[str, Any] | None:
    from onepixel.attack.stage import select_correct_images
    from onepixel.models import save_checkpoint
    from onepixel.train import build_kwargs_for, train_model

    data = load_data(args.dataset, args.data)
    if data is None:
        return None
    name, train, test = data
    torch.manual_seed(0)
    start = time.perf_counter()
    model, metrics = train_model(
        "lenet",
        train,
        test,
        epochs=args.epochs,
        batch_size=128,
        lr=0.05,
        augment=False,
        seed=0,
        device="cpu",
        log=lambda line: None,
    )
    train_s = time.perf_counter() - start
    save_checkpoint(work / "lenet.pt", model, "lenet", build_kwargs_for(train))
    images = torch.from_numpy(test["image"].values)
    labels = torch.from_numpy(test["label"].values.astype(np.int64))
    chosen = select_correct_images(model, images, labels, args.images, seed=0)
    np.savez(work / "images.npz", images=images[chosen].numpy(), labels=labels[chosen].numpy(), ids=chosen)
    genes = 2 + images.shape[1]
    return {
        "dataset": name,
        "train_images": int(train.sizes["sample"]),
        "test_accuracy": float(metrics["test_accuracy"]),
        "train_seconds": train_s,
        "images": len(chosen),
        "image_shape": list(images.shape[1:]),
        "genes": genes,
        "classes": int(test.sizes["class"]),
        "art_population": (400 // genes) * genes,
    }


# ---------------------------------------------------------------------------
# one tool (child process)
# ---------------------------------------------------------------------------
def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _start_peak_rss() -> float:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs``) and return the RSS in MiB.

    Without the reset (not Linux, no permission) the lifetime peak (``ru_maxrss``) is the
    baseline, and a peak lower than the one of the imports shows as 0.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _status_mib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss() -> float:
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_tool(tool: str, work: Path, args) -> dict[str, Any]:
    from onepixel.attack import OnePixelAttack
    from onepixel.models import load_checkpoint

    device = torch.device(args.device)
    model, _ = load_checkpoint(work / "lenet.pt", map_location=device)
    model.eval()
    data = np.load(work / "images.npz")
    images_u8 = torch.from_numpy(data["images"])
    labels = torch.from_numpy(data["labels"])
    x01 = images_u8.float() / 255
    genes = 2 + images_u8.shape[1]
    counted = Counter(model).eval()
    pop, gens = args.population, args.generations

    if tool.startswith("onepixel"):
        strategy = tool.split()[1]
        attack = OnePixelAttack(
            counted,
            pixels=1,
            population=pop,
            generations=gens,
            strategy=strategy,
            F=0.5,
            crossover=1.0,
            seed=0,
            batch_size=args.batch_size,
            device=device,
        )
        fwd_batch = min(args.batch_size, max(1, args.batch_size // pop) * pop)

        def call():
            return attack.run(images_u8, labels).adversarial.float() / 255

        actual_pop = pop
    elif tool == "torchattacks":
        import torchattacks

        attack = torchattacks.OnePixel(counted, pixels=1, steps=gens, popsize=pop, inf_batch=128)  # device: the model's
        fwd_batch = 128
        actual_pop = max(5, int(pop / genes) * genes)

        def call():
            return attack(x01.to(device), labels.to(device)).detach()

    elif tool == "ART":
        from art.attacks.evasion import PixelAttack
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(
            model=nn.Sequential(counted, nn.Softmax(dim=1)).eval(),
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(images_u8.shape[1:]),
            nb_classes=int(args.classes),
            clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )
        attack = PixelAttack(classifier, th=1, es=1, max_iter=gens, targeted=False, verbose=False)
        fwd_batch = 128
        actual_pop = (400 // genes) * genes

        def call():
            return torch.from_numpy(attack.generate(x01.numpy(), labels.numpy())).float()

    else:
        raise SystemExit(f"unknown tool {tool!r}")

    np.random.seed(0)
    torch.manual_seed(0)
    with torch.inference_mode():
        counted(x01[:1].to(device))  # warm-up
    counted.images = counted.calls = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device)
    base_rss = _start_peak_rss()
    start = time.perf_counter()
    adv = call()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - start
    evals, calls = counted.images, counted.calls
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**20
    else:
        peak = max(0.0, _peak_rss() - base_rss)

    # the harness's own verdict: misclassified, at most one pixel changed
    adv = adv.cpu().float()
    changed = (adv - x01).abs().amax(1).flatten(1).gt(0.5 / 255).sum(1)
    with torch.inference_mode():
        pred = model(adv.to(device)).argmax(1).cpu()
    success = (pred != labels) & (changed <= 1)

    # plain batches of the attacked images themselves (random noise would run slower on a CPU)
    plain_x = x01.to(device).repeat(-(-fwd_batch // len(x01)), 1, 1, 1)[:fwd_batch].contiguous()
    with torch.inference_mode():
        model(plain_x)
    # best of 3 measurements of about plain_images / 3 images each (robust on a shared machine)
    repeats = max(1, args.plain_images // 3 // fwd_batch)
    plain = max(plain_rate(model, plain_x, repeats) for _ in range(3))
    return {
        "tool": tool,
        "population": actual_pop,
        "max gens": gens,
        "evals": evals,
        "wall s": wall,
        "evals/s": evals / wall,
        "successes": int(success.sum()),
        "succ/s": float(success.sum()) / wall,
        "success %": 100.0 * float(success.float().mean()),
        "peak MiB": peak,
        "fwd batch": fwd_batch,
        "mean batch": evals / max(calls, 1),
        "plain img/s": plain,
        "evals/s / plain": evals / wall / plain,
        "one_pixel_violations": int((changed > 1).sum()),
    }


def run_throughput(work: Path, args) -> dict[str, Any]:
    """``attack_throughput.bench`` on the trained LeNet: onepixel's candidates/s with full batches
    (targeted at a class the model never predicts, so no early stop) over the plain forward rate
    at the same batch, best of interleaved rounds."""
    from onepixel.models import load_checkpoint

    device = torch.device(args.device)
    model, _ = load_checkpoint(work / "lenet.pt", map_location=device)
    shape = tuple(np.load(work / "images.npz")["images"].shape[1:])
    opts = argparse.Namespace(
        batch_size=args.batch_size,
        population=args.population,
        images=0,
        generations=args.throughput_generations,
        rounds=args.rounds,
        width=0,
    )
    plain, rate, batch, stats = bench(shape[0], shape[1], opts, device, model=model)
    return {
        "batch": batch,
        "plain img/s": plain,
        "attack cand/s": rate,
        "ratio": rate / plain,
        "candidates": stats["candidates"],
        "generations": args.throughput_generations,
        "rounds": args.rounds,
    }


# ---------------------------------------------------------------------------
def _format(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['tool']} | " + " | ".join(["-"] * (len(COLUMNS) - 2)) + f" | {row['skipped']} |")
        else:
            lines.append("| " + " | ".join(_format(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def _installed(tool: str) -> bool:
    import importlib.util

    module = {"torchattacks": "torchattacks", "ART": "art"}.get(tool)
    return module is None or importlib.util.find_spec(module) is not None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 images, 3 generations, 1 epoch (< 60 s on a CPU)")
    parser.add_argument(
        "--dataset",
        choices=("auto", "cifar10-subset", "digits"),
        default="auto",
        help="auto: the CIFAR-10 subset when present, else the digits",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("ONEPIXEL_CIFAR10_SUBSET", DEFAULT_SUBSET)),
        help="the subset's cifar-10-batches-py folder",
    )
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument(
        "--population",
        type=int,
        default=0,
        help="default: ART's fixed population ((400 // genes) * genes: 400 RGB, 399 grey)",
    )
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8, help="LeNet training epochs")
    parser.add_argument("--batch-size", type=int, default=8192, help="onepixel's candidates per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument(
        "--plain-images",
        type=int,
        default=24000,
        help="images of the plain forward-rate measurement per tool (best of 3 thirds)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the full-batch throughput check")
    parser.add_argument(
        "--throughput-generations", type=int, default=4, help="generations of the full-batch throughput check"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and the setup as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.generations, args.epochs = 4, 3, 1
        args.rounds, args.throughput_generations, args.plain_images = 1, 1, 6000

    if args.worker:  # child: one tool (or the throughput check), result as JSON on stdout's last line
        worker = run_throughput if args.worker == "throughput" else lambda work, a: run_tool(args.worker, work, a)
        print(json.dumps(worker(args.work, args)))
        return 0

    with tempfile.TemporaryDirectory(prefix="onepixel-compare-") as tmp:
        work = Path(tmp)
        setup = prepare(args, work)
        if setup is None:
            print(f"skipped: the CIFAR-10 subset is not at {args.data} (use --dataset digits or --data PATH)")
            return 0
        if not args.population:
            args.population = setup["art_population"]
        classes = setup["classes"]
        print(
            f"device={args.device} threads={torch.get_num_threads()} dataset={setup['dataset']} "
            f"(LeNet, {setup['train_images']} training images, {args.epochs} epochs in "
            f"{setup['train_seconds']:.0f} s, test accuracy {setup['test_accuracy']:.3f}) "
            f"images={setup['images']} {tuple(setup['image_shape'])} pixels=1 untargeted "
            f"population={args.population} generations={args.generations}",
            flush=True,
        )
        common = [
            "--work",
            str(work),
            "--device",
            args.device,
            "--population",
            str(args.population),
            "--generations",
            str(args.generations),
            "--batch-size",
            str(args.batch_size),
            "--classes",
            str(classes),
            "--rounds",
            str(args.rounds),
            "--throughput-generations",
            str(args.throughput_generations),
            "--plain-images",
            str(args.plain_images),
        ]

        def child(worker: str) -> dict[str, Any] | str:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", worker, *common],
                capture_output=True,
                text=True,
                env={**os.environ, "TQDM_DISABLE": "1"},
            )
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return f"failed (exit {proc.returncode})"
            return json.loads(proc.stdout.strip().splitlines()[-1])

        rows = []
        for tool in args.tools:
            row = child(tool) if _installed(tool) else "not installed"
            rows.append(row if isinstance(row, dict) else {"tool": tool, "skipped": row})
            if isinstance(row, dict):
                print(f"  {tool}: done in {row['wall s']:.1f} s", flush=True)
        throughput = child("throughput")
        print()
        print(table(rows))
        print()
        if isinstance(throughput, dict):
            print(
                f"onepixel full-batch throughput (attack_throughput.bench, {throughput['rounds']} round(s), "
                f"{throughput['generations']} generation(s), no early stop): "
                f"{throughput['attack cand/s']:.0f} candidates/s / {throughput['plain img/s']:.0f} plain img/s "
                f"at batch {throughput['batch']} = ratio {throughput['ratio']:.2f}"
            )
        else:
            print(f"onepixel full-batch throughput: {throughput}")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "setup": {
                            **setup,
                            "population": args.population,
                            "generations": args.generations,
                            "device": args.device,
                            "threads": torch.get_num_threads(),
                        },
                        "rows": rows,
                        "throughput": throughput,
                    },
                    indent=2,
                )
                + "\n"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
