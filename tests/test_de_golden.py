"""Golden digests of the DE engine: every result field and every batch the model sees, bit for bit.

A refactoring of :mod:`onepixel.attack.de` must not change any attack. For ~100
configurations (strategies, 1 and 3 pixels, targeted or not, batch sizes from 1
to all images in flight, populations that do and do not divide the batch size,
1 and 3 channels, linear and conv models, models returning probabilities and
models emitting NaN / inf / overflowing logits) this test runs the engine and
compares a SHA-256 digest of every :class:`AttackResult` field (dtype, shape,
bytes), ``model_output`` and ``last_stats`` counts, and a second digest of every
input batch the model was called with (the candidate stream), against the
digests in ``tests/data/de_golden.json``.

The digests were recorded from a reference engine on one platform (torch
version and CPU capability are stored with them): float kernels may round
differently elsewhere, so on another platform a mismatch skips instead of
failing. Re-record only from a known-good engine (e.g. the last commit's)::

    git show HEAD:src/onepixel/attack/de.py > /tmp/de_ref.py
    PYTHONPATH=src python tests/test_de_golden.py --record --engine /tmp/de_ref.py
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import sys
import types
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest
import torch
from torch import nn

GOLDEN = Path(__file__).resolve().parent / "data" / "de_golden.json"
#: counts of ``last_stats`` that belong to the result (``seconds`` and the rate do not)
STATS = ("candidates", "de_success", "rejected")


@dataclass(frozen=True)
class Case:
    """One attack configuration of the golden set."""

    name: str
    model: str
    channels: int
    height: int
    width: int
    n: int
    classes: int
    pixels: int
    strategy: str
    targeted: bool
    population: int
    generations: int
    batch_size: int
    seed: int
    F: float
    crossover: float
    labels: str  # "pred": the model's clean prediction; "cycle": i % classes (some already misclassified)
    ids: bool  # pass global ids 1000 + 7 i
    output: str


# ---------------------------------------------------------------------------
# tiny deterministic models
# ---------------------------------------------------------------------------
def _seeded(module: nn.Module, seed: int, scale: float) -> nn.Module:
    """``module`` with every parameter drawn from N(0, scale^2) by a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def _linear(c: int, h: int, w: int, k: int, seed: int) -> nn.Module:
    return _seeded(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)), seed, 0.4)


def _conv(c: int, h: int, w: int, k: int, seed: int) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, k),
    )
    return _seeded(net, seed, 0.8)


class _Scaled(nn.Module):
    """``inner`` times ``factor`` (1e37: some logits overflow to inf, some rows' sums overflow)."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.factor


class _NonFinite(nn.Module):
    """``inner``'s logits; NaN rows when some pixel > 0.93, +inf / -inf in one class for very dark pixels."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x).clone()
        flat = x.flatten(1)
        out[flat.amax(1) > 0.93] = math.nan
        out[flat.amin(1) < 0.02, 0] = math.inf
        out[(flat.amin(1) >= 0.02) & (flat.amin(1) < 0.05), -1] = -math.inf
        return out


def build_model(case: Case) -> nn.Module:
    """The case's model (seeded from the case's seed)."""
    c, h, w, k, s = case.channels, case.height, case.width, case.classes, case.seed + 17
    kind = case.model
    base = _conv(c, h, w, k, s) if kind.startswith("conv") else _linear(c, h, w, k, s)
    if kind.endswith("_prob"):
        return nn.Sequential(base, nn.Softmax(1))
    if kind.endswith("_sharp"):  # probabilities with exact zeros (log of 0 is clamped)
        return nn.Sequential(_Scaled(base, 60.0), nn.Softmax(1))
    if kind == "nonfinite":
        return _NonFinite(base)
    if kind == "overflow":
        return _Scaled(base, 1e37)
    return base


class StreamHash(nn.Module):
    """Calls ``inner`` and hashes every input batch (dtype, shape, bytes) in call order."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.hash = hashlib.sha256()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.detach().cpu().contiguous()
        self.hash.update(f"{t.dtype}{tuple(t.shape)};".encode())
        self.hash.update(t.numpy().tobytes())
        self.calls += 1
        return self.inner(x)


# ---------------------------------------------------------------------------
# the configurations
# ---------------------------------------------------------------------------
MODELS = ("linear", "conv", "linear_prob", "conv_prob", "nonfinite", "overflow", "conv_sharp")
SHAPES = ((1, 8, 8), (3, 8, 8), (1, 13, 9), (3, 13, 9))
POPULATIONS = (4, 5, 6, 8, 10, 7)


def _batch_size(j: int, p: int, n: int) -> int:
    """Batch sizes from 1 to more than all images in flight; divisors of it and not."""
    choices = (1, p - 1, p, p + 1, 2 * p, 2 * p + 3, 3 * p - 1, n * p, n * p + 7, 4096, 3 * p, p // 2 + 1, 5 * p)
    return choices[j % len(choices)]


def cases() -> list[Case]:
    """104 configurations: 8 (strategy, pixels, targeted) combinations x 13 variations."""
    out: list[Case] = []
    combos = [(s, k, t) for s in ("rand1", "best1bin") for k in (1, 3) for t in (False, True)]
    for ci, (strategy, pixels, targeted) in enumerate(combos):
        for j in range(13):
            i = ci * 13 + j
            c, h, w = SHAPES[(j + ci) % len(SHAPES)]
            p = POPULATIONS[(j + 2 * ci) % len(POPULATIONS)]
            n = 1 + (i * 5) % 7
            model = MODELS[(j + ci) % len(MODELS)]
            output = "auto"
            if i % 17 == 5:
                output = "probabilities" if model.endswith(("_prob", "_sharp")) else "logits"
            out.append(
                Case(
                    name=f"{i:03d}-{strategy}-k{pixels}-{'t' if targeted else 'u'}-{model}-{c}x{h}x{w}-n{n}-p{p}",
                    model=model,
                    channels=c,
                    height=h,
                    width=w,
                    n=n,
                    classes=(3, 5, 10)[i % 3],
                    pixels=pixels,
                    strategy=strategy,
                    targeted=targeted,
                    population=p,
                    generations=2 + (i % 5),
                    batch_size=max(1, _batch_size(j, p, n)),
                    seed=i % 4,
                    F=(0.5, 0.8, 1.3, 0.3)[i % 4],
                    crossover=(1.0, 0.7, 0.3, 0.0, 0.5)[i % 5],
                    labels="cycle" if i % 4 == 3 else "pred",
                    ids=i % 3 == 1,
                    output=output,
                )
            )
    return out


def _inputs(
    case: Case, model: nn.Module
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Images (uint8), labels, targets and ids of a case."""
    g = torch.Generator().manual_seed(1000 + int(case.name[:3]))
    low, high = (20, 230) if case.model == "nonfinite" else (0, 256)  # clean images have finite outputs
    images = torch.randint(low, high, (case.n, case.channels, case.height, case.width), generator=g, dtype=torch.uint8)
    idx = torch.arange(case.n)
    if case.labels == "pred":
        with torch.inference_mode():
            labels = model(images.float() / 255).nan_to_num(0.0, 1.0, -1.0).argmax(1)
    else:
        labels = idx % case.classes
    targets = (labels + 1 + idx % (case.classes - 1)) % case.classes if case.targeted else None
    ids = 1000 + 7 * idx if case.ids else None
    return images, labels, targets, ids


def digests(case: Case, engine: types.ModuleType) -> dict[str, str]:
    """Run ``engine.OnePixelAttack`` on the case: ``{"result": sha256, "stream": sha256}``."""
    model = StreamHash(build_model(case))
    images, labels, targets, ids = _inputs(case, model.inner)
    attack = engine.OnePixelAttack(
        model,
        pixels=case.pixels,
        population=case.population,
        generations=case.generations,
        F=case.F,
        crossover=case.crossover,
        strategy=case.strategy,
        targeted=case.targeted,
        seed=case.seed,
        batch_size=case.batch_size,
        output=case.output,
    )
    result = attack.run(images, labels, targets, ids)
    h = hashlib.sha256()
    for f in fields(result):
        t = getattr(result, f.name).detach().cpu().contiguous()
        h.update(f"{f.name}:{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    h.update(f"model_output={attack.model_output};".encode())
    h.update(json.dumps({key: attack.last_stats[key] for key in STATS}, sort_keys=True).encode())
    return {"result": h.hexdigest(), "stream": model.hash.hexdigest()}


def platform() -> dict[str, str]:
    """What the float kernels depend on."""
    return {"torch": torch.__version__, "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}


def load_engine(path: str | None) -> types.ModuleType:
    """``onepixel.attack.de``, or the engine module in file ``path`` (a reference copy)."""
    if path is None:
        from onepixel.attack import de

        return de
    spec = importlib.util.spec_from_file_location("de_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------
CASES = cases()


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_covers_every_case(golden: dict) -> None:
    assert sorted(golden["cases"]) == sorted(c.name for c in CASES)
    assert len(CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_engine_matches_golden_digest(case: Case, golden: dict) -> None:
    want = golden["cases"][case.name]
    assert want["config"] == asdict(case), "the case changed: re-record from a known-good engine"
    torch.set_num_threads(1)
    got = digests(case, load_engine(None))
    if got != {"result": want["result"], "stream": want["stream"]} and platform() != golden["platform"]:
        pytest.skip(f"digests recorded on {golden['platform']}, here {platform()}: float kernels may differ")
    assert got["stream"] == want["stream"], "the model was called with other candidate batches"
    assert got["result"] == want["result"], "the AttackResult differs"


def main(argv: list[str] | None = None) -> None:
    """``--record``: write the digests of every case from ``--engine`` (default: the installed engine)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", action="store_true", help=f"write {GOLDEN}")
    parser.add_argument("--engine", help="file of the reference engine (default: onepixel.attack.de)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    engine = load_engine(args.engine)
    table = {c.name: {"config": asdict(c), **digests(c, engine)} for c in CASES}
    if args.record:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(table[name], sort_keys=True)}" for name in sorted(table))
        GOLDEN.write_text(f'{{"platform": {json.dumps(platform())},\n "cases": {{\n{rows}\n}}}}\n')  # a line per case
        print(f"recorded {len(table)} cases in {GOLDEN}")
    else:
        old = json.loads(GOLDEN.read_text())["cases"]
        bad = [name for name, row in table.items() if old.get(name) != row]
        print(f"{len(table) - len(bad)}/{len(table)} cases match" + (f"; differ: {bad}" if bad else ""))


if __name__ == "__main__":
    main()
