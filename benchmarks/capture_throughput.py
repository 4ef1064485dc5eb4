"""Cost of capture + propagation maps against the forward passes they need, per cube codec.

The capture stage runs every attacked sample through the model twice (clean and
adversarial image) and streams all feature layers to netCDF cubes; the
propagation stage reads the cubes back and computes PMmax/PMavg. This script
prepares a model checkpoint, a test set and a one-pixel "attack" file (a random
pixel of each image set to a random colour: the cost does not depend on whether
the attack succeeded), then prints side by side, in one run:

- the plain forward time of the same ``2 N`` images at the same batch size
  (inference mode, no hooks, nothing written),
- capture and propagation time for each codec of ``onepixel.cubes.COMPRESSIONS``,
  their ratio to the forward time (target: capture + propagation <= 3x),
- the write rate (float32 activations captured per second of capture), the size
  on disk relative to the raw float32, and the rate of reading the cubes back whole.

With ``--memory N1,N2`` it also runs capture + propagation in fresh child
processes for ``N1`` and ``N2`` samples and prints their peak resident memory,
which must not grow with the number of samples (the cubes are streamed).

Uses the real CIFAR-10 images of ``../shared/data/cifar10-subset`` when present,
random 32x32 images otherwise; the model has fresh weights (a trained one gives
other activation values, not other shapes). Examples:

    PYTHONPATH=src python benchmarks/capture_throughput.py                      # ResNet-20, 256 samples
    PYTHONPATH=src python benchmarks/capture_throughput.py --images 64 --memory 200,2000
    PYTHONPATH=src python benchmarks/capture_throughput.py --device cuda --images 2000 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from onepixel.attack.results import save_attack
from onepixel.cubes import COMPRESSIONS
from onepixel.data.dataset import load_dataset, make_dataset, save_dataset
from onepixel.files import file_sha256
from onepixel.lineage import dataset_digest, selection_digest
from onepixel.models import build_model, save_checkpoint
from onepixel.stages import run_stage
from onepixel.torch_utils import resolve_device

SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-subset"


def load_images(n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` uint8 ``(N, 3, 32, 32)`` images: real CIFAR-10 test images (repeated if needed) or random ones."""
    if SUBSET.is_dir():
        from onepixel.data.cifar10 import read_cifar10_root

        _train, test = read_cifar10_root(SUBSET, log=None)
        images = test["image"].values
        return np.resize(images, (n, *images.shape[1:])), "CIFAR-10 subset"
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), "random"


def synthetic_attack(images: np.ndarray, seed: int = 0):
    """An attack file's dataset: a random pixel of each image replaced by a random colour."""

    rng = np.random.default_rng(seed)
    n, channels, height, width = images.shape
    px, py = rng.integers(0, width, (n, 1)), rng.integers(0, height, (n, 1))
    color = rng.integers(0, 256, (n, 1, channels), dtype=np.uint8)
    adversarial = images.copy()
    adversarial[np.arange(n), :, py[:, 0], px[:, 0]] = color[:, 0]
    probs = np.full((n, 10), 0.1, np.float32)
    return xr.Dataset(
        {
            "success": ("sample", rng.integers(0, 2, n).astype(np.uint8)),
            "queries": ("sample", np.zeros(n, np.int64)),
            "generations": ("sample", np.zeros(n, np.int64)),
            "rejected_candidates": ("sample", np.zeros(n, np.int64)),
            "pixel_x": (("sample", "pixel"), px),
            "pixel_y": (("sample", "pixel"), py),
            "color": (("sample", "pixel", "channel"), color),
            "true_class": ("sample", np.zeros(n, np.int64)),
            "target_class": ("sample", np.full(n, -1, np.int64)),
            "adv_class": ("sample", np.ones(n, np.int64)),
            "prob_clean": (("sample", "class"), probs),
            "prob_adv": (("sample", "class"), probs),
            "adversarial": (("sample", "channel", "y", "x"), adversarial),
        },
        coords={"sample_id": ("sample", np.arange(n, dtype=np.int64))},
        attrs={"model_output": "logits", "attack_config": "{}", "shards": 1, "wall_time_s": 0.0},
    )


def prepare(directory: Path, model_name: str, n: int) -> tuple[dict[str, Path], str]:
    """Write ``checkpoint``, ``test`` and ``attack`` files for ``n`` samples into ``directory``."""
    images, source = load_images(n)
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 3, "image_size": 32}
    model = build_model(model_name, **kwargs)
    paths = {"checkpoint": directory / "model.pt", "test": directory / "test.nc", "attack": directory / "attack.nc"}
    save_checkpoint(paths["checkpoint"], model, model_name, kwargs)
    save_dataset(
        make_dataset(images, np.zeros(n, np.int64), [str(c) for c in range(10)], "bench", "test"), paths["test"]
    )
    attack = synthetic_attack(images)
    attack.attrs.update(  # what it was made from, which capture checks
        model_sha256=file_sha256(paths["checkpoint"]),
        test_digest=dataset_digest(load_dataset(paths["test"])),
        selection_digest=selection_digest(attack["sample_id"].values),
    )
    save_attack(attack, paths["attack"])
    return paths, source


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_seconds(model_name: str, paths: dict[str, Path], batch_size: int, device: torch.device) -> float:
    """Seconds of the plain forward passes capture needs: clean and adversarial images, same batches."""
    from onepixel.attack import load_attack
    from onepixel.data import load_dataset
    from onepixel.models import load_checkpoint

    model, _ = load_checkpoint(paths["checkpoint"], map_location=device)
    model.eval()
    attack = load_attack(paths["attack"])
    clean = load_dataset(paths["test"])["image"].values[attack["sample_id"].values]
    batches = [clean, attack["adversarial"].values]
    with torch.inference_mode():
        model(torch.zeros(1, *clean.shape[1:], device=device))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for images in batches:
            for s in range(0, len(images), batch_size):
                model(torch.from_numpy(images[s : s + batch_size]).to(device).float().div_(255))
        _sync(device)
    return time.perf_counter() - start


def run_stages(paths: dict[str, Path], out: Path, batch_size: int, device: str, compression: str) -> dict[str, float]:
    """Time the capture and propagation stages; sizes of what they wrote."""
    start = time.perf_counter()
    files = run_stage(
        "capture",
        {"checkpoint": paths["checkpoint"], "test": paths["test"], "attack": paths["attack"]},
        {"out": out / "cubes"},
        {"capture": {"batch_size": batch_size, "compression": compression, "store": "cubes"}, "device": device},
    )
    capture = time.perf_counter() - start
    start = time.perf_counter()
    run_stage("propagation", {"cubes": out / "cubes"}, {"out": out / "pm.nc"}).close()
    propagation = time.perf_counter() - start
    raw, start = 0, time.perf_counter()
    for file in files:  # read the cubes back whole, as an analysis of the activations would
        with xr.open_dataset(file) as cube:
            raw += cube["clean"].values.nbytes + cube["delta"].values.nbytes
    return {
        "capture_s": capture,
        "propagation_s": propagation,
        "read_s": time.perf_counter() - start,
        "raw_bytes": raw,
        "disk_bytes": sum(file.stat().st_size for file in files),
    }


def measure(paths: dict[str, Path], args: argparse.Namespace, device: torch.device, tmp: Path) -> tuple[float, dict]:
    """Best forward time and best stage times per codec over interleaved rounds (robust on a busy machine)."""
    forward = float("inf")
    best: dict[str, dict[str, float]] = {}
    for round_ in range(args.rounds):
        forward = min(forward, forward_seconds(args.model, paths, args.batch_size, device))
        for compression in args.compression:
            row = run_stages(paths, tmp / f"{compression}-{round_}", args.batch_size, str(device), compression)
            previous = best.setdefault(compression, row)
            for key in ("capture_s", "propagation_s", "read_s"):
                previous[key] = min(previous[key], row[key])
    return forward, best


def peak_rss_child(model_name: str, n: int, batch_size: int, device: str) -> float:
    """Peak resident memory (MiB) of a fresh process that prepares ``n`` samples and runs capture + propagation."""
    code = (
        "import json, resource, sys, tempfile; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "import capture_throughput as b;"
        "d = Path(tempfile.mkdtemp()); paths, _ = b.prepare(d, sys.argv[2], int(sys.argv[3]));"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "b.run_stages(paths, d, int(sys.argv[4]), sys.argv[5], 'zstd');"
        "print(json.dumps({'before': before, 'after': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), model_name, str(n), str(batch_size), device],
        capture_output=True,
        text=True,
        check=True,
    )
    usage = json.loads(out.stdout.strip().splitlines()[-1])
    return usage["after"] / 1024


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=256, help="attacked samples N (2N forward passes)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compression", nargs="*", default=list(COMPRESSIONS), choices=list(COMPRESSIONS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best time of each is used")
    parser.add_argument("--memory", default="", help="N1,N2: peak memory of capture + propagation in child processes")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    report: dict[str, object] = {
        "model": args.model,
        "images": args.images,
        "batch_size": args.batch_size,
        "device": str(device),
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths, source = prepare(Path(tmp), args.model, args.images)
        forward, best = measure(paths, args, device, Path(tmp))
        report.update(source=source, forward_s=forward)
        print(
            f"{args.model}, {args.images} samples of 3x32x32 ({source}), batch {args.batch_size}, {device}, "
            f"best of {args.rounds} interleaved rounds"
        )
        print(f"plain forward of the {2 * args.images} images: {forward:.2f} s")
        print(
            "| codec | capture s | propagation s | (capture + PM) / forward | write MiB/s | size / raw | cube read MiB/s |"
        )
        print("|---|---|---|---|---|---|---|")
        for compression, row in best.items():
            mib = row["raw_bytes"] / 2**20
            row.update(
                codec=compression,
                ratio=(row["capture_s"] + row["propagation_s"]) / forward,
                write_mib_s=mib / row["capture_s"],
                size_ratio=row["disk_bytes"] / row["raw_bytes"],
                read_mib_s=mib / row["read_s"],
            )
            report["rows"].append(row)
            print(
                f"| {compression} | {row['capture_s']:.2f} | {row['propagation_s']:.2f} | {row['ratio']:.2f} | "
                f"{row['write_mib_s']:.0f} | {row['size_ratio']:.3f} | {row['read_mib_s']:.0f} |"
            )
        print(f"raw float32 activations (clean + delta): {mib:.1f} MiB")
    if args.memory:
        sizes = [int(value) for value in args.memory.split(",")]
        peaks = {n: peak_rss_child(args.model, n, args.batch_size, args.device) for n in sizes}
        report["peak_rss_mib"] = peaks
        for n, peak in peaks.items():
            print(f"peak resident memory, capture + propagation of {n} samples: {peak:.0f} MiB")
        if len(sizes) == 2:
            print(
                f"peak ratio {sizes[1]} / {sizes[0]} samples: {peaks[sizes[1]] / peaks[sizes[0]]:.2f} "
                f"(sample ratio {sizes[1] / sizes[0]:.0f})"
            )
    return report


if __name__ == "__main__":
    main()
