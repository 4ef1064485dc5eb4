"""Every GPU measurement of the project in one run of at most 8 minutes: one JSON file and one Markdown table.

Written for a lent GPU machine (one NVIDIA H200, Python 3.12, torch 2.11 with CUDA, no
network), and kept working on the CPU by ``--tiny`` (tiny models, batches and images;
CI runs it through ``tests/test_gpu_script.py``). It writes ``gpu.json`` and ``gpu.md``
to ``--out DIR``.

Sections, cheapest first (``--sections a,b`` runs only some; the others are recorded
as skipped). Each runs in its own ``try``/``except`` under its own time budget (a
``SIGALRM`` ends a section that overruns it; the longer ones also stop their own
loops in time and keep what they measured), and records ``status`` (``ok``, ``failed``
or ``skipped``), ``error`` and ``seconds`` next to its numbers. The JSON is rewritten
atomically (temporary name, then rename) after every section, with the sections not
reached yet recorded as skipped, so one section's failure, or a run killed half-way,
never loses the others. The exit status is 1 when a section failed, else 0.

1. ``determinism``: two identical DE attack runs (same seed, images, device) compared
   field by field (every field of ``AttackResult``, bit for bit), under
   ``deterministic_torch`` (the attack stage's settings) and under torch's defaults;
   also whether another ``batch_size`` gives the same result (information only).
2. ``incremental``: candidates/s of ``onepixel.incremental.IncrementalEvaluator``
   against the dense batched forward of the same candidates (ResNet-20 at 32x32,
   torchvision's ResNet-18 at 224x224; tiny: LeNet at 8x8), and their largest logit
   difference. Skipped, with the reason, while that module is absent or does not import.
3. ``capture``: ``capture_throughput.main`` (capture + propagation maps vs the forward
   passes they need, per codec). Skipped without netCDF4.
4. ``compare_tools``: onepixel (rand1, best1bin) vs torchattacks' ``OnePixel`` (and ART
   when installed) on the same images at the paper's budget, population 400 and 100
   generations, with ``compare_tools.prepare`` and ``compare_tools.run_tool`` (in this
   process). Skipped when torchattacks does not import.
5. ``attack_forward_ratio``: the DE engine's candidates/s over the model's plain batched
   forward rate (``attack_throughput.workload``/``make_attack``/``attack_rate``/
   ``plain_rate``, interleaved rounds, best of each) for ResNet-20 and WRN-16-4 at
   32x32, population 400, at 1k, 8k and 32k candidates per pass (forward batches of
   800, 8,000 and 32,400: whole populations), float32 under ``deterministic_torch`` as
   the attack stage runs; and the plain forward with TF32 on, bf16 autocast,
   channels_last and channels_last + bf16 (their speed-ups over float32: the attack
   itself has no such modes yet). Peak GPU memory (``torch.cuda.max_memory_allocated``)
   of the attack and of the float32 forward. A batch whose estimated memory
   (``onepixel.memory.forward_bytes_per_image``) exceeds half the GPU is skipped.
6. ``paper_setting``: the paper's attack on the staged CIFAR-10 subset: a ResNet-20
   trained on the subset's 4,660 training images (60 epochs, on the GPU; trained again
   with twice the epochs when fewer than 500 test images are classified correctly and
   time allows), 500 correctly classified test images, untargeted one-pixel DE with
   population 400 and 100 generations (``batch_size`` 32,768, ``deterministic_torch``):
   wall time, success rate, queries. If the budget runs out first, the images that
   finished DE are reported (``complete: false``).

How the budgets were sized (no GPU was lent when this was written; from FLOPs per
image as ``onepixel.estimate.forward_flops`` counts them: LeNet 1.3 MFLOP, ResNet-20
81, WRN-16-4 785 at 32x32, ResNet-18 3,627 at 224x224; at the project's planning
figure of 20 TFLOP/s sustained float32 with TF32 off, ``onepixel.estimate.DEFAULT_TFLOPS``,
and an engine/forward ratio of 0.85: ResNet-20 about 210k candidates/s, WRN-16-4 about
21k, ResNet-18 at 224 about 4.7k images/s):

=====================  ======  =================================================================
section                budget  estimate
=====================  ======  =================================================================
determinism              30 s  2 settings x 2 runs x 32 images x 400 x 21 = 1.1M ResNet-20
                               candidates, plus one run at another batch size: about 6 s
incremental              40 s  dense ResNet-20 3 x 32,768 candidates, ResNet-18 3 x 1,024: about
                               2 s, plus model builds and cuDNN warm-up
capture                  50 s  bound by compression and disk, not the GPU: 1,000 samples = 781 MiB
                               of float32 cubes per codec (RESULTS.md: 3.8 s zstd, 3.7 s none on
                               the CPU machine's disk), 2 codecs x 2 rounds: about 20 s
compare_tools            90 s  LeNet on 20 images; onepixel <= 20 x 40,400 = 808k candidates
                               (seconds); torchattacks attacks one image at a time, in forward
                               batches of 128, bound by its own per-generation work rather than
                               the model (RESULTS.md, CPU: 10.4k evaluations/s): <= 808k
                               evaluations, about 40-80 s (fewer with early stops); LeNet training
                               on the CPU: ~5 s. Rows finished before a timeout are kept
attack_forward_ratio    100 s  per model about 145k candidates per batch-size set, times about 9
                               (warm-up and 2 attack runs, 2 float32 forwards, 4 variants x 2
                               rounds): 1.3M images, WRN-16-4 about 55 s, ResNet-20 about 6 s
paper_setting          rest    training 60 epochs x 37 steps of 128 images: 10-30 s (launch-bound);
                               the attack <= 500 x 40,400 = 20.2M candidates, <= 100 s at 210k/s
                               (fewer with early stops); gets what the others leave of the total:
                               at least about 150 s
=====================  ======  =================================================================

The total (``--total-budget``, default 480 s) counts from the start of ``main`` (after
torch's import; the CUDA context is made before the first section, outside its budget);
each section gets at most what is left of it (a few seconds are kept for writing the
files), so the whole run ends within 8 minutes even when a section overruns.
``--budget-scale`` multiplies the section budgets (e.g. 2 on a slower GPU, with a
larger ``--total-budget``).

On the GPU machine (the device tool), after ``bash benchmarks/gpu_carry.sh`` here
(it downloads the wheels that machine lacks into ``.whl/`` and copies the CIFAR-10
subset into ``.gpu/cifar10-subset``, both ignored by git), with ``carry: [".whl", ".gpu"]``
and ``timeout_s: 600``::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 && python3 benchmarks/gpu.py --out $OUT --cifar-root .gpu/cifar10-subset

The repository's ``../shared`` does not travel to that machine, hence the copy under
``.gpu/``. Here, on the CPU (well under a minute)::

    PYTHONPATH=src python benchmarks/gpu.py --tiny --device cpu --out /tmp/gpu-tiny

``--fail SECTION`` makes a section raise at its start (to check that the others
still run and the files stay complete).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))  # attack_throughput, compare_tools, capture_throughput

FORMAT = "onepixel-gpu-benchmarks/1"
#: what the files are written within, at the end of the total budget
RESERVE_S = 5.0


class SectionTimeout(BaseException):
    """A section ran past its budget (a BaseException, so that no ``except Exception`` inside swallows it)."""


class Skip(Exception):
    """A section that cannot run here, and why."""


class OutOfTime(Exception):
    """Raised by a section's own loop when its budget is nearly spent (it keeps what it measured)."""


# ---------------------------------------------------------------------------
# sizes: full (the GPU) and tiny (a CPU, for CI)
# ---------------------------------------------------------------------------
FULL: dict[str, dict[str, Any]] = {
    "determinism": {"model": "resnet20", "size": 32, "images": 32, "population": 400, "generations": 20,
                    "batch_size": 8192, "other_batch_size": 1000},
    "incremental": {"cases": [("resnet20", 32, 8192, 32768), ("resnet18", 224, 256, 1024)], "rounds": 3,
                    "de": ("resnet20", 32, 64, 400, 2)},
    "capture": {"model": "resnet20", "images": 1000, "batch_size": 250, "rounds": 2, "codecs": ["zstd", "none"]},
    "compare_tools": {"images": 20, "population": 400, "generations": 100, "epochs": 8, "batch_size": 8192,
                      "plain_images": 24000},
    "attack_forward_ratio": {"models": ["resnet20", "wrn16_4"], "size": 32, "batches": [1024, 8192, 32768],
                             "population": 400, "generations": 2, "min_candidates": 24000, "rounds": 2,
                             "variant_calls": 0},
    "paper_setting": {"model": "resnet20", "images": 500, "population": 400, "generations": 100, "epochs": 60,
                      "train_images": 0, "batch_size": 32768, "retrain": True},
}  # fmt: skip
TINY: dict[str, dict[str, Any]] = {
    "determinism": {"model": "lenet", "size": 8, "images": 4, "population": 10, "generations": 2,
                    "batch_size": 64, "other_batch_size": 20},
    "incremental": {"cases": [("lenet", 8, 64, 128)], "rounds": 1, "de": ("lenet", 8, 2, 10, 1)},
    "capture": {"model": "lenet", "images": 8, "batch_size": 4, "rounds": 1, "codecs": ["zstd", "none"]},
    "compare_tools": {"images": 4, "population": 10, "generations": 2, "epochs": 1, "batch_size": 64,
                      "plain_images": 600},
    "attack_forward_ratio": {"models": ["resnet20", "wrn16_4"], "size": 8, "batches": [64],
                             "population": 16, "generations": 1, "min_candidates": 64, "rounds": 1,
                             "variant_calls": 1},
    "paper_setting": {"model": "lenet", "images": 4, "population": 10, "generations": 2, "epochs": 1,
                      "train_images": 300, "batch_size": 64, "retrain": False},
}  # fmt: skip
#: seconds per section on the GPU (None: what the others leave of the total); see the module docstring
BUDGETS: dict[str, float | None] = {
    "determinism": 30,
    "incremental": 40,
    "capture": 50,
    "compare_tools": 90,
    "attack_forward_ratio": 100,
    "paper_setting": None,
}


@dataclasses.dataclass
class Context:
    """What every section gets: the options, the device, its sizes and its deadline."""

    args: argparse.Namespace
    device: torch.device
    sizes: dict[str, Any]
    deadline: float  #: time.monotonic() at which the section's budget ends
    cifar_root: Path | None
    save: Callable[[], None] = lambda: None  #: rewrites the files (what a section measured so far)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) / 2**20


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _deterministic() -> contextlib.AbstractContextManager[None]:
    from onepixel.torch_utils import deterministic_torch

    return deterministic_torch()


@contextlib.contextmanager
def _tf32() -> Iterator[None]:
    """TF32 on for cuDNN convolutions and CUDA matrix products (torch's default for convolutions)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


# ---------------------------------------------------------------------------
# 1. determinism
# ---------------------------------------------------------------------------
def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor as integers of the same width (floats compared bit for bit, NaN included)."""
    if t.is_floating_point():
        return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def differing_fields(a: Any, b: Any) -> list[str]:
    """Names of the fields of two AttackResults that are not bit-identical."""
    out = []
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(_bits(x), _bits(y)):
            out.append(field.name)
    return out


def section_determinism(ctx: Context, rec: dict[str, Any]) -> None:
    from attack_throughput import make_model

    from onepixel.attack import OnePixelAttack

    s = ctx.sizes
    model = make_model(s["model"], 3, s["size"], 0).to(ctx.device).eval()
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (s["images"], 3, s["size"], s["size"]), generator=gen, dtype=torch.uint8)
    with torch.inference_mode():
        labels = model(images.to(ctx.device).float() / 255).argmax(1).cpu()
    rec.update({k: s[k] for k in ("model", "size", "images", "population", "generations", "batch_size")})

    def attack(batch_size: int) -> Any:
        op = OnePixelAttack(
            model,
            population=s["population"],
            generations=s["generations"],
            batch_size=batch_size,
            seed=0,
            device=ctx.device,
        )
        result = op.run(images, labels)
        rec["candidates"] = op.last_stats["candidates"]
        return result

    settings: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
        "deterministic_torch": _deterministic,
        "torch_defaults": contextlib.nullcontext,
    }
    for name, setting in settings.items():
        with setting():
            start = time.perf_counter()
            first = attack(s["batch_size"])
            second = attack(s["batch_size"])
            seconds = time.perf_counter() - start
            other = differing_fields(first, second)
            rec[name] = {"identical": not other, "differing_fields": other, "seconds": seconds}
            if name == "deterministic_torch":
                rec["successes"] = int(first.success.sum())
                third = attack(s["other_batch_size"])
                diff = differing_fields(first, third)
                rec["other_batch_size"] = {
                    "batch_size": s["other_batch_size"],
                    "identical": not diff,
                    "differing_fields": diff,
                }
    rec["identical"] = rec["deterministic_torch"]["identical"]


# ---------------------------------------------------------------------------
# 2. incremental evaluator (onepixel.incremental) and the engines of the DE attack (onepixel.engine)
# ---------------------------------------------------------------------------
def _incremental_module() -> Any:
    if importlib.util.find_spec("onepixel.incremental") is None:
        raise Skip("onepixel.incremental is not there yet (IncrementalEvaluator(model, image).logits(xs, ys, colors))")
    try:
        return importlib.import_module("onepixel.incremental")
    except Exception as exc:
        raise Skip(f"onepixel.incremental does not import: {type(exc).__name__}: {exc}") from exc


def _build_case_model(name: str, size: int, device: torch.device) -> torch.nn.Module:
    from onepixel.models import MODEL_NAMES, build_model
    from onepixel.models.sources import build_source_model

    torch.manual_seed(0)
    if name in MODEL_NAMES:
        model = build_model(name, num_classes=10, in_channels=3, image_size=size)
    else:  # a torchvision classification model, fresh weights (weights=None)
        model = build_source_model(name, {"torchvision": name}, 10, 3, size, seed=0)
    return model.to(device).eval()


def _dense_logits(model: torch.nn.Module, image: torch.Tensor, xs, ys, colors) -> torch.Tensor:
    """The model on ``len(xs)`` copies of ``image`` (float ``(C, H, W)``) with one pixel each replaced."""
    from onepixel.data.dataset import apply_pixels

    m = xs.shape[0]
    batch = apply_pixels(image[None].expand(m, -1, -1, -1), xs[:, None], ys[:, None], colors[:, None, :].float() / 255)
    return model(batch)


def _incremental_case(ctx: Context, module: Any, name: str, size: int, batch: int, total: int) -> dict[str, Any]:
    """Dense vs incremental candidates/s of one model and image size, best of interleaved rounds."""
    model = _build_case_model(name, size, ctx.device)
    gen = torch.Generator().manual_seed(2)
    image_u8 = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8).to(ctx.device)
    image = image_u8.float() / 255
    xs = torch.randint(0, size, (total,), generator=gen).to(ctx.device)
    ys = torch.randint(0, size, (total,), generator=gen).to(ctx.device)
    colors = torch.randint(0, 256, (total, 3), generator=gen, dtype=torch.uint8).to(ctx.device)
    with _deterministic(), torch.inference_mode():
        evaluator = module.IncrementalEvaluator(model, image_u8)  # (C, H, W) uint8: divided by 255

        def call(xs: torch.Tensor, ys: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
            return evaluator.logits(xs[:, None], ys[:, None], colors[:, None, :])  # (B, k), (B, k, C)

        check = slice(0, min(64, total))
        expected = _dense_logits(model, image, xs[check], ys[check], colors[check]).float()
        diff = float((call(xs[check], ys[check], colors[check]).float() - expected).abs().max())

        def dense_pass() -> None:
            for s in range(0, total, batch):
                _dense_logits(model, image, xs[s : s + batch], ys[s : s + batch], colors[s : s + batch])

        def incremental_pass() -> None:
            for s in range(0, total, batch):
                call(xs[s : s + batch], ys[s : s + batch], colors[s : s + batch])

        dense_pass()  # warm-up (kernels, allocator)
        incremental_pass()
        dense_rates, inc_rates = [], []
        for _ in range(ctx.sizes["rounds"]):
            for fn, rates in ((dense_pass, dense_rates), (incremental_pass, inc_rates)):
                ctx.sync()
                start = time.perf_counter()
                fn()
                ctx.sync()
                rates.append(total / (time.perf_counter() - start))
    dense, inc = max(dense_rates), max(inc_rates)
    return {
        "model": name,
        "size": size,
        "batch": batch,
        "candidates": total,
        "dense cand/s": dense,
        "incremental cand/s": inc,
        "speedup": inc / dense,
        "max abs logit diff": diff,
        "max abs logit": float(expected.abs().max()),
        "fallback": getattr(evaluator, "fallback_reason", None),
    }


def section_incremental(ctx: Context, rec: dict[str, Any]) -> None:
    module = _incremental_module()
    rec["rows"] = []
    for name, size, batch, total in ctx.sizes["cases"]:
        if ctx.left() < 5:
            rec["rows"].append({"model": name, "size": size, "skipped": "section budget spent"})
            continue
        rec["rows"].append(_incremental_case(ctx, module, name, size, batch, total))
        ctx.save()
        _free_memory(ctx.device)
    if not any("speedup" in row for row in rec["rows"]):
        raise OutOfTime("no case measured within the section budget")
    if ctx.left() > 5:
        rec["de"] = _de_engines(ctx, *ctx.sizes["de"])
        ctx.save()


def _de_engines(ctx: Context, name: str, size: int, images: int, population: int, generations: int) -> dict[str, Any]:
    """The DE attack with engine dense, then incremental, on the same images: candidates/s, the same results?
    (what ``engine: auto`` should pick on this device; it stays dense off the CPU until measured)."""
    from onepixel.attack.de import OnePixelAttack

    model = _build_case_model(name, size, ctx.device)
    gen = torch.Generator().manual_seed(3)
    batch = torch.randint(0, 256, (images, 3, size, size), generator=gen, dtype=torch.uint8)
    with torch.inference_mode():
        labels = model(batch.to(ctx.device).float() / 255).argmax(1).cpu()  # no attack stops at its first query
    out: dict[str, Any] = {"model": name, "size": size, "images": images, "population": population,
                           "generations": generations}  # fmt: skip
    results = {}
    for engine in ("dense", "incremental"):
        attack = OnePixelAttack(model, population=population, generations=generations, seed=0, engine=engine)
        ctx.sync()
        start = time.perf_counter()
        results[engine] = attack.run(batch, labels)
        ctx.sync()
        out[f"{engine} cand/s"] = float(results[engine].queries.sum()) / (time.perf_counter() - start)
    out["speedup"] = out["incremental cand/s"] / out["dense cand/s"]
    out["same results"] = all(
        torch.equal(getattr(results["dense"], k), getattr(results["incremental"], k))
        for k in ("success", "pixel_x", "pixel_y", "color")
    )
    return out


# ---------------------------------------------------------------------------
# 3. capture throughput (capture_throughput.py)
# ---------------------------------------------------------------------------
def section_capture(ctx: Context, rec: dict[str, Any]) -> None:
    if importlib.util.find_spec("netCDF4") is None:
        raise Skip("netCDF4 is not installed (carry its wheel: benchmarks/gpu_carry.sh)")
    import capture_throughput

    if ctx.cifar_root is not None:  # its default is ../shared beside the repository
        capture_throughput.SUBSET = ctx.cifar_root
    s = ctx.sizes
    argv = ["--model", s["model"], "--images", str(s["images"]), "--batch-size", str(s["batch_size"])]
    argv += ["--device", str(ctx.device), "--rounds", str(s["rounds"]), "--compression", *s["codecs"]]
    with contextlib.redirect_stdout(sys.stderr):  # its table goes to the log, the numbers to the JSON
        report = capture_throughput.main(argv)
    rec.update(report)


# ---------------------------------------------------------------------------
# 4. onepixel vs torchattacks (compare_tools.py)
# ---------------------------------------------------------------------------
def section_compare_tools(ctx: Context, rec: dict[str, Any]) -> None:
    try:
        import torchattacks  # noqa: F401
    except Exception as exc:
        raise Skip(f"torchattacks does not import ({type(exc).__name__}: {exc}); carry its wheel") from exc
    import compare_tools

    s = ctx.sizes
    batches = None
    if ctx.cifar_root is not None:
        batches = (
            ctx.cifar_root if (ctx.cifar_root / "batches.meta").is_file() else ctx.cifar_root / "cifar-10-batches-py"
        )
    subset = batches is not None and batches.is_dir()
    args = argparse.Namespace(
        dataset="cifar10-subset" if subset else "digits",  # compare_tools' own fallback: the digits
        data=batches if subset else Path(),
        images=s["images"],
        population=s["population"],
        generations=s["generations"],
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        device=str(ctx.device),
        plain_images=s["plain_images"],
        classes=10,
    )
    tools = ["onepixel rand1", "torchattacks", "onepixel best1bin"]
    if importlib.util.find_spec("art") is not None:
        tools.append("ART")
    rec["rows"] = []
    with tempfile.TemporaryDirectory(prefix="onepixel-gpu-compare-") as tmp:
        with contextlib.redirect_stdout(sys.stderr):
            setup = compare_tools.prepare(args, Path(tmp))
        args.classes = setup["classes"]
        rec["setup"] = {**setup, "population": s["population"], "generations": s["generations"]}
        for tool in tools:
            if ctx.left() < 10:
                rec["rows"].append({"tool": tool, "skipped": "section budget spent"})
                continue
            rec["rows"].append(compare_tools.run_tool(tool, Path(tmp), args))
            ctx.save()


# ---------------------------------------------------------------------------
# 5. attack / forward ratio (attack_throughput.py), forward variants
# ---------------------------------------------------------------------------
VARIANTS = ("tf32", "bf16", "channels_last", "channels_last_bf16")


def _variant_runner(variant: str, model: torch.nn.Module, x: torch.Tensor, device: torch.device):
    """``(model, x, context factory)`` of a forward variant; everything else as the float32 forward."""
    if variant.startswith("channels_last"):
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if variant.endswith("bf16"):
        return model, x, lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if variant == "tf32":
        return model, x, _tf32
    return model, x, contextlib.nullcontext


def section_attack_forward_ratio(ctx: Context, rec: dict[str, Any]) -> None:
    from attack_throughput import attack_rate, make_attack, make_model, plain_rate, workload

    from onepixel.attack import de
    from onepixel.memory import forward_bytes_per_image

    s = ctx.sizes
    pop, gens, size = s["population"], s["generations"], s["size"]
    rec.update(population=pop, generations=gens, size=size, rounds=s["rounds"], rows=[])
    limit = torch.cuda.get_device_properties(ctx.device).total_memory / 2 if ctx.device.type == "cuda" else None
    for name in s["models"]:
        model = make_model(name, 3, size, 0).to(ctx.device).eval()
        per_image = forward_bytes_per_image(model, (3, size, size), ctx.device)
        rate = None  # the model's last attack rate: predicts the next batch's time
        for batch in s["batches"]:
            row: dict[str, Any] = {"model": name, "batch_size": batch}
            rec["rows"].append(row)
            rows = max(1, batch // pop) * pop if batch >= pop else batch
            if limit is not None and rows * per_image > limit:
                row["skipped"] = f"estimated {rows * per_image / 2**30:.1f} GiB > half the GPU"
                continue
            slots = max(1, batch // pop)
            images = max(slots, -(-s["min_candidates"] // (pop * (gens + 1))))
            candidates = images * pop * (gens + 1)
            cost = candidates * (3 + 2 * s["rounds"] + len(VARIANTS) * s["rounds"] * 0.5)
            if rate is not None and cost / rate > ctx.left() - 2:
                row["skipped"] = f"would take about {cost / rate:.0f} s, {ctx.left():.0f} s left in the budget"
                continue
            if ctx.left() < 3:
                row["skipped"] = "section budget spent"
                continue
            opts = argparse.Namespace(
                batch_size=batch, population=pop, generations=gens, images=images, width=0, model=name
            )
            with _deterministic():
                with contextlib.redirect_stdout(sys.stderr):
                    work = workload(3, size, opts, ctx.device, model=model)
                attack = make_attack(de, work, opts, ctx.device)  # one warm-up run
                runners = {v: _variant_runner(v, work.model, work.plain_x, ctx.device) for v in VARIANTS}
                plain_rate(work.model, work.plain_x, 1)
                calls = s["variant_calls"] or work.forwards  # tiny: one call, no warm-up (bf16 is slow on a CPU)
                for vmodel, vx, vctx in runners.values():
                    if not s["variant_calls"]:
                        with vctx():
                            plain_rate(vmodel, vx, 1)
                plains: list[float] = []
                attacks: list[float] = []
                variants: dict[str, list[float]] = {v: [] for v in VARIANTS}
                for r in range(s["rounds"]):
                    last = r == s["rounds"] - 1
                    if last:
                        ctx.reset_peak()
                    plains.append(plain_rate(work.model, work.plain_x, work.forwards))
                    if last:
                        row["plain peak MiB"] = ctx.peak_mib()
                        ctx.reset_peak()
                    attacks.append(attack_rate(attack, work, ctx.device))
                    if last:
                        row["attack peak MiB"] = ctx.peak_mib()
                    for v, (vmodel, vx, vctx) in runners.items():
                        with vctx():
                            variants[v].append(plain_rate(vmodel, vx, calls))
            plain, rate = max(plains), max(attacks)
            row.update(
                {
                    "forward batch": int(work.plain_x.shape[0]),
                    "images": images,
                    "candidates per run": attack.last_stats["candidates"],
                    "plain img/s": plain,
                    "attack cand/s": rate,
                    "ratio": rate / plain,
                    **{f"{v} img/s": max(variants[v]) for v in VARIANTS},
                    **{f"{v} speedup": max(variants[v]) / plain for v in VARIANTS},
                }
            )
            del work, attack, runners
            ctx.save()
            _free_memory(ctx.device)
        del model
        _free_memory(ctx.device)
    if not any("ratio" in row for row in rec["rows"]):
        raise OutOfTime("no batch size measured within the section budget")


# ---------------------------------------------------------------------------
# 6. the paper's setting on the CIFAR-10 subset
# ---------------------------------------------------------------------------
def section_paper_setting(ctx: Context, rec: dict[str, Any]) -> None:
    from onepixel.attack import OnePixelAttack
    from onepixel.attack.de import FinishedRows
    from onepixel.attack.stage import select_correct_images
    from onepixel.data import read_cifar10_root
    from onepixel.train import train_model

    if ctx.cifar_root is None:
        raise Skip("the CIFAR-10 subset was not found; pass --cifar-root (on the GPU machine: .gpu/cifar10-subset)")
    s = ctx.sizes
    train, test = read_cifar10_root(ctx.cifar_root, log=None)
    if s["train_images"]:
        train = train.isel(sample=slice(0, s["train_images"]))
    images = torch.from_numpy(test["image"].values)
    labels = torch.from_numpy(test["label"].values.astype(np.int64))
    rec.update(
        model=s["model"],
        train_images=int(train.sizes["sample"]),
        test_images=len(labels),
        population=s["population"],
        generations=s["generations"],
        batch_size=s["batch_size"],
    )
    epochs, train_s, model = s["epochs"], 0.0, None
    chosen = np.zeros(0, np.int64)
    while True:
        start = time.perf_counter()
        model, metrics = train_model(
            s["model"], train, test, epochs=epochs, seed=0, device=str(ctx.device), log=lambda line: None
        )
        took = time.perf_counter() - start
        train_s += took
        # every correctly classified test image in the seeded order; a smaller selection is its prefix
        correct = select_correct_images(model, images, labels, len(labels), seed=0, device=ctx.device)
        chosen = correct[: s["images"]]
        rec.update(epochs=epochs, test_accuracy=float(metrics["test_accuracy"]), train_seconds=train_s)
        rec["correct_test_images"] = len(correct)
        # again with twice the epochs while too few images are correct and there is time for it and the attack
        if len(chosen) >= s["images"] or not s["retrain"] or 2 * took > 0.25 * ctx.left():
            break
        epochs *= 2
    rec["images"] = len(chosen)
    rec["enough_images"] = len(chosen) >= s["images"]
    attack = OnePixelAttack(
        model,
        pixels=1,
        population=s["population"],
        generations=s["generations"],
        batch_size=s["batch_size"],
        seed=0,
        device=ctx.device,
    )
    finished: list[FinishedRows] = []
    soft_deadline = ctx.deadline - max(3.0, 0.03 * max(ctx.left(), 0))

    def on_finished(rows: FinishedRows) -> None:
        finished.append(rows)
        if time.monotonic() > soft_deadline:
            raise OutOfTime("budget")

    ids = torch.from_numpy(chosen)
    ctx.reset_peak()
    start = time.perf_counter()
    try:
        with _deterministic():
            result = attack.run(images[ids], labels[ids], ids=ids, on_finished=on_finished)
    except OutOfTime:
        wall = time.perf_counter() - start
        ok = torch.cat([rows.de_success for rows in finished]) if finished else torch.zeros(0, dtype=torch.bool)
        rec.update(
            complete=False,
            attack_seconds=wall,
            images_finished=len(ok),
            de_successes=int(ok.sum()),
            success_rate=float(ok.float().mean()) if len(ok) else float("nan"),
            note="the budget ran out: DE's own verdicts on the images that finished",
            peak_mib=ctx.peak_mib(),
        )
        return
    wall = time.perf_counter() - start
    stats = attack.last_stats
    rec.update(
        complete=True,
        attack_seconds=wall,
        images_finished=len(result),
        successes=int(result.success.sum()),
        success_rate=float(result.success.float().mean()) if len(result) else float("nan"),
        de_successes=int(stats["de_success"]),
        candidates=int(stats["candidates"]),
        candidates_per_s=float(stats["candidates_per_s"]),
        mean_queries=float(result.queries.double().mean()) if len(result) else float("nan"),
        peak_mib=ctx.peak_mib(),
    )


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "determinism": section_determinism,
    "incremental": section_incremental,
    "capture": section_capture,
    "compare_tools": section_compare_tools,
    "attack_forward_ratio": section_attack_forward_ratio,
    "paper_setting": section_paper_setting,
}


def _default_cifar_root() -> Path:
    inside = REPO / "shared" / "data" / "cifar10-subset"
    return inside if inside.exists() else REPO.parent / "shared" / "data" / "cifar10-subset"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment(device: torch.device | None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": str(device),
    }
    for name in ("xarray", "netCDF4", "torchattacks", "adversarial-robustness-toolbox", "jsonschema", "dask"):
        env[name] = _version(name)
    env["onepixel.incremental"] = importlib.util.find_spec("onepixel.incremental") is not None
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}")
    return env


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if isinstance(exc, ModuleNotFoundError):
        text += " (not installed on this machine: carry its wheel, see benchmarks/gpu_carry.sh)"
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# the Markdown
# ---------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if value is None:
        return "-"
    return str(value).replace("|", "/").replace("\n", " ")


def _table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        if "skipped" in row:
            first = _cell(row.get(columns[0]))
            lines.append(f"| {first} | skipped: {_cell(row['skipped'])} |" + " |" * (len(columns) - 2))
        else:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines


def headline(name: str, rec: dict[str, Any]) -> str:
    """One line of a section's main numbers (or its error)."""
    if rec["status"] != "ok":
        return f"{rec['status']}: {rec.get('error', '')}"[:300]
    try:
        if name == "determinism":
            d, t = rec["deterministic_torch"], rec["torch_defaults"]
            return (
                f"identical: {_cell(d['identical'])} (deterministic_torch), {_cell(t['identical'])} (torch defaults); "
                f"batch_size {rec['other_batch_size']['batch_size']}: {_cell(rec['other_batch_size']['identical'])}"
            )
        if name == "incremental":
            cases = [f"{r['model']} {r['size']}px: {_cell(r['speedup'])}x dense" for r in rec["rows"] if "speedup" in r]
            de = rec.get("de")
            if de:
                cases.append(
                    f"DE {de['model']}: {_cell(de['speedup'])}x dense, same results {_cell(de['same results'])}"
                )
            return "; ".join(cases)
        if name == "capture":
            return "; ".join(f"{r['codec']}: (capture + PM) / forward {_cell(r['ratio'])}" for r in rec["rows"])
        if name == "compare_tools":
            return "; ".join(
                f"{r['tool']}: {_cell(r['evals/s'])} evals/s, {_cell(r['success %'])} %"
                for r in rec["rows"]
                if "skipped" not in r
            )
        if name == "attack_forward_ratio":
            return "; ".join(
                f"{r['model']}@{r['forward batch']}: {_cell(r['ratio'])}" for r in rec["rows"] if "ratio" in r
            )
        if name == "paper_setting":
            done = "" if rec["complete"] else " (partial)"
            return (
                f"{rec['model']}, {rec['images_finished']}/{rec['images']} images{done}, "
                f"success {_cell(100 * rec['success_rate'])} %, attack {_cell(rec['attack_seconds'])} s, "
                f"test accuracy {_cell(rec['test_accuracy'])}"
            )
    except (KeyError, TypeError, ValueError) as exc:
        return f"(no headline: {type(exc).__name__}: {exc})"
    return ""


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    where = env.get("gpu") or (
        env["device"] if env["device"] != "None" else f"no device ({report['requested_device']})"
    )
    lines = [
        "# GPU measurements (benchmarks/gpu.py)",
        "",
        f"{where}, torch {env['torch']} (CUDA {env['torch_cuda']}), Python {env['python']}, "
        f"{'tiny' if report['tiny'] else 'full'} run, {_cell(report['elapsed_s'])} s of {_cell(report['budget_s'])} s, "
        f"{report['created']}",
        "",
        "| section | status | seconds | budget s | result |",
        "|---|---|---|---|---|",
    ]
    sections = report["sections"]
    for name in report["order"]:
        rec = sections[name]
        lines.append(
            f"| {name} | {rec['status']} | {_cell(rec.get('seconds'))} | {_cell(rec.get('budget_s'))} | "
            f"{_cell(headline(name, rec))} |"
        )
    details = {
        "incremental": [
            "model", "size", "batch", "dense cand/s", "incremental cand/s", "speedup", "max abs logit diff", "fallback",
        ],
        "capture": ["codec", "capture_s", "propagation_s", "ratio", "write_mib_s", "size_ratio", "read_mib_s"],
        "attack_forward_ratio": [
            "model", "forward batch", "plain img/s", "attack cand/s", "ratio",
            *(f"{v} speedup" for v in VARIANTS), "plain peak MiB", "attack peak MiB",
        ],
    }  # fmt: skip
    for name in report["order"]:
        rec = sections[name]
        if rec["status"] != "ok" and not rec.get("rows"):
            continue
        if name == "compare_tools" and rec.get("rows"):
            import compare_tools

            lines += ["", f"## {name}", ""]
            lines += compare_tools.table(rec["rows"]).splitlines()
        elif name in details and rec.get("rows"):
            lines += ["", f"## {name}", "", *_table(details[name], rec["rows"])]
        elif name in ("paper_setting", "determinism"):
            flat = {k: v for k, v in rec.items() if k not in ("traceback",)}
            lines += ["", f"## {name}", "", "| key | value |", "|---|---|"]
            for key, value in flat.items():
                if isinstance(value, dict):
                    value = ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
                lines.append(f"| {key} | {_cell(value)} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
def _alarm(signum: int, frame: Any) -> None:
    raise SectionTimeout


def run_section(name: str, ctx: Context, rec: dict[str, Any], fail: set[str]) -> None:
    """Run one section into ``rec`` (its numbers, status, error, seconds); never raises (but KeyboardInterrupt)."""
    budget = max(ctx.left(), 0.1)
    timeout = f"ran past its budget of {budget:.0f} s (stopped)"
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, budget)
    start = time.perf_counter()
    try:
        try:
            if name in fail:
                raise RuntimeError(f"forced failure (--fail {name})")
            SECTIONS[name](ctx, rec)
            rec["status"] = "ok"
            rec.pop("error", None)
        except SectionTimeout:
            rec["status"], rec["error"] = "failed", timeout
        except Skip as exc:
            rec["status"], rec["error"] = "skipped", str(exc)
        except OutOfTime as exc:
            rec["status"], rec["error"] = "failed", f"out of time: {exc}"
        except Exception as exc:
            rec["status"], rec["error"] = "failed", _error_text(exc)
            rec["traceback"] = traceback.format_exc().splitlines()[-25:]
    except SectionTimeout:  # the alarm went off while an error was being recorded
        rec["status"], rec["error"] = "failed", timeout
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    rec["seconds"] = time.perf_counter() - start
    with contextlib.suppress(Exception):
        _free_memory(ctx.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of gpu.json and gpu.md")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--tiny", action="store_true", help="tiny models, batches and images (the CPU, CI)")
    parser.add_argument("--sections", default="", help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument(
        "--cifar-root",
        type=Path,
        default=_default_cifar_root(),
        help="the CIFAR-10 subset (folder holding cifar-10-batches-py); default shared/data/cifar10-subset in the "
        "repository if present, else ../shared/data/cifar10-subset",
    )
    parser.add_argument("--total-budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every section's budget")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--fail", default="", help="comma-separated sections made to raise at their start (tests)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS at its first use
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)

    def names(text: str) -> list[str]:
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in SECTIONS]
        if unknown:
            parser.error(f"unknown section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
        return chosen

    selected = set(names(args.sections) or SECTIONS)
    fail = set(names(args.fail))
    args.out.mkdir(parents=True, exist_ok=True)
    cifar_root = args.cifar_root if args.cifar_root.exists() else None

    if importlib.util.find_spec("onepixel") is None:  # not installed and PYTHONPATH without src
        sys.path.insert(0, str(REPO / "src"))
    device: torch.device | None = None
    device_error = ""
    try:
        from onepixel.torch_utils import resolve_device

        device = resolve_device(args.device)
    except Exception as exc:
        device_error = _error_text(exc)

    report: dict[str, Any] = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "tiny": args.tiny,
        "requested_device": args.device,
        "budget_s": args.total_budget,
        "cifar_root": str(cifar_root) if cifar_root else None,
        "environment": environment(device),
        "order": list(SECTIONS),
        "sections": {
            name: {"status": "skipped", "error": "not reached (the run stopped before it)", "seconds": 0.0}
            if name in selected
            else {"status": "skipped", "error": "not selected (--sections)", "seconds": 0.0}
            for name in SECTIONS
        },
        "elapsed_s": 0.0,
    }

    def write() -> None:
        report["elapsed_s"] = time.monotonic() - t0
        _atomic_write(args.out / "gpu.json", json.dumps(_jsonable(report), indent=2) + "\n")
        try:
            text = markdown(report)
        except Exception as exc:  # the numbers are in the JSON whatever happens to the table
            text = f"# GPU measurements (benchmarks/gpu.py)\n\nno table: {_error_text(exc)}; see gpu.json\n"
        _atomic_write(args.out / "gpu.md", text)

    if device is not None and device.type == "cuda":  # the CUDA context, cuBLAS and cuDNN: before any budget
        start = time.perf_counter()
        with contextlib.suppress(Exception):
            x = torch.ones(8, 3, 32, 32, device=device)
            torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device=device)).sum().item()
            (x.flatten(1) @ x.flatten(1).T).sum().item()
        report["environment"]["cuda_init_s"] = time.perf_counter() - start
    write()
    sizes = TINY if args.tiny else FULL
    end = t0 + args.total_budget - RESERVE_S
    for index, name in enumerate(SECTIONS, 1):
        if name not in selected:
            continue
        rec: dict[str, Any] = {"status": "skipped", "seconds": 0.0}
        report["sections"][name] = rec
        budget = BUDGETS[name]
        left = end - time.monotonic()
        rec["budget_s"] = left if budget is None else min(budget * args.budget_scale, left)
        if device is None:
            rec["error"] = f"no device: {device_error}"
        elif rec["budget_s"] < 2:
            rec["error"] = "the total budget is spent"
        else:
            print(f"[{index}/{len(SECTIONS)}] {name} (budget {rec['budget_s']:.0f} s) ...", flush=True)
            ctx = Context(args, device, sizes[name], time.monotonic() + rec["budget_s"], cifar_root, write)
            rec.update(status="failed", error="running: the run stopped inside this section")
            write()
            run_section(name, ctx, rec, fail)
        print(f"[{index}/{len(SECTIONS)}] {name}: {rec['status']} in {rec['seconds']:.1f} s; {headline(name, rec)}")
        sys.stdout.flush()
        write()
    write()
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'} in {report['elapsed_s']:.0f} s")
    failed = [n for n, r in report["sections"].items() if r["status"] == "failed"]
    if device is None:
        failed.append("device")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
