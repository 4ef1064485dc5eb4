"""Exact incremental evaluation of k-pixel candidates: only the changed region goes through the network.

A one-pixel candidate differs from its clean image in one pixel, and a
convolutional network's activations differ from the clean image's only inside
the pixel's receptive-field cone: a few positions in the first layers, growing
with depth. :class:`IncrementalEvaluator` runs the clean image through the
network once, keeps every node's output (batch 1), and evaluates a batch of
candidates by propagating, node by node, only each candidate's changed
*patch*: the idea of Krypton (Nakandala, Kumar and Papakonstantinou,
*Incremental and Approximate Inference for Faster Occlusion-based Deep CNN
Explanations*, SIGMOD 2019: incremental view maintenance of a CNN for patch
occlusions) and DeltaCNN (Parger, Tang, Twigg, Keskin, Wang and Steinberger,
*DeltaCNN: End-to-End CNN Inference of Sparse Frame Differences in Videos*,
CVPR 2022: only updated regions are propagated from cached activations).

**Method.** The model is traced with ``torch.fx.symbolic_trace`` (standard
``torch.nn`` layers are leaves). For each node, a batch of B candidates is in
one of four states: *clean* (equal to the cached output for every candidate),
a *patch* (for candidate b, the output equals the clean cache outside a
rectangle of common size ``h x w`` at its own offset ``(y_b, x_b)``, and the
values inside are kept: ``(B, C, h, w)``), *dense* (the full ``(B, ...)``
tensor) or a Python value (``x.size(0)`` is B). Every candidate has its own
offset, so a batch of random positions costs what one position costs; the
patches of a batch share one size (the largest), shifted inwards at the
borders so that they stay inside the map. Per operation:

- elementwise operations (activations, ``Normalize``'s sub/div, batch norm and
  dropout in eval mode, arithmetic with constants) keep the patch; a binary
  operation of two changed tensors (the residual add) works on the union of
  their patches, each filled from its clean cache;
- convolutions, max and average pooling and strided slicing (``x[:, :, ::2, ::2]``):
  the output patch is every output position whose window meets the input
  patch; it is computed by running the layer with padding 0 on the input
  window it needs (the clean cache with the candidate's patch pasted in),
  where positions outside the map take the layer's padding value (0; -inf for
  max pooling; average pooling divides a sum by the layer's own divisor map,
  so ``count_include_pad`` and ``ceil_mode`` keep their meaning);
- channel concatenation (DenseNet): the union of the patches; constant
  ``F.pad`` shifts the patch (and pads the channels of its values);
- global average pooling (adaptive to 1x1, ``mean`` over the spatial axes):
  the clean mean plus the patch's change summed and divided by the map's area,
  which equals the mean of the full map; adaptive pooling that divides its map
  evenly is a pooling window, one that keeps its size is the identity;
- anything else that is batch-wise (flatten, linear, view, softmax ...) is
  computed in full for the B candidates.

A patch larger than ``dense_fraction`` of its map (or a window operation whose
output would be) switches to dense computation from there on (the clean map
broadcast with the patch pasted in), so the evaluator is never much slower
than the plain forward pass.

**Exactness.** Every output position inside a patch is computed from exactly
the inputs the plain forward reads, with the same weights and padding, so the
logits equal the plain forward's up to floating-point rounding (the
convolution kernels sum in a different order on other shapes, and a global
mean is the clean mean plus the mean change): about 1e-6 relative on float32
models, 1e-12 on float64 ones (``model.double()``).

**Fallback.** A model that ``torch.fx`` cannot trace (data-dependent control
flow), an operation the evaluator does not know (one that could mix the batch
or whose spatial meaning is unknown), a model in a mode it cannot honour
(batch norm without running statistics) or a self-check that fails (three
candidates evaluated both ways at construction) makes the evaluator use the
plain forward ``model(apply_pixels(...))`` instead; it logs one warning
naming the reason, and :attr:`IncrementalEvaluator.fallback_reason` says it
(None when incremental).

The evaluator never modifies the model: it runs in eval mode for each call
(every submodule's own flag restored after, :func:`onepixel.torch_utils.eval_mode`),
under ``torch.inference_mode``, with the model's parameters where they are.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from onepixel.data.dataset import apply_pixels
from onepixel.torch_utils import eval_mode, model_device, model_dtype

__all__ = ["IncrementalCost", "IncrementalEvaluator", "LayerCost", "incremental_cost", "incremental_speedup_ceiling"]

log = logging.getLogger(__name__)

Tensor = torch.Tensor

# ----------------------------------------------------------------------------------------------------------
# what the evaluator knows

_POINTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Mish,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.AlphaDropout,
)
#: batch-wise modules computed in full
_DENSE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Flatten, nn.Softmax, nn.LogSoftmax, nn.BatchNorm1d)
_POINTWISE_FUNCTIONS: set[Any] = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.neg,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.mish,
    F.sigmoid,
    F.tanh,
}
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "neg", "clamp", "contiguous", "clone"}
#: batch-wise methods computed in full (the self-check catches a view that drops the batch)
_DENSE_METHODS = {"view", "reshape", "flatten", "softmax", "log_softmax"}
_DENSE_FUNCTIONS: set[Any] = {torch.flatten, F.linear, torch.softmax, F.softmax, F.log_softmax, torch.log_softmax}
_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}
#: the position of the ``inplace`` argument of functional activations
_INPLACE_POSITION: dict[Any, int] = {
    F.relu: 1,
    F.relu6: 1,
    F.silu: 1,
    F.hardswish: 1,
    F.hardsigmoid: 1,
    F.mish: 1,
    F.elu: 2,
    F.leaky_relu: 2,
    F.hardtanh: 3,
    F.dropout: 3,
}


@dataclass(frozen=True)
class LayerCost:
    """What one node cost in the last :meth:`IncrementalEvaluator.logits` call.

    Attributes:
        name: the fx node's name (e.g. ``layer1_0_conv1``).
        op: what it computes (module class, function or method name).
        area_fraction: the largest changed patch of its output over the map's area (0: unchanged,
            1: dense or not spatial).
        dense: whether it was computed in full for the batch.
        seconds: wall time spent on the node (all chunks of the call).
        macs_fraction: multiply-accumulates of a convolution or linear layer done, over what the plain
            forward does at the same batch (0 for other operations).
    """

    name: str
    op: str
    area_fraction: float
    dense: bool
    seconds: float
    macs_fraction: float


@dataclass(frozen=True)
class _Window:
    """A sliding-window operation along both spatial axes.

    ``ext`` is the dilated kernel extent, ``pad`` the padding before the first input (negative: an
    offset into the input, as for a slice), ``fill`` the value of positions outside the map, and
    ``apply(window, oy, ox)`` computes the outputs from an input window with padding 0 (``oy``, ``ox``:
    each candidate's first output position). ``macs`` is per output position (convolutions only).
    """

    ext: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    fill: float
    apply: Callable[[Tensor, Tensor, Tensor], Tensor]
    macs: int = 0


@dataclass
class _Step:
    """How one input-dependent node is evaluated: its kind and what that kind needs."""

    node: fx.Node
    kind: str  # pointwise | identity | window | union | global | pad | dense | value | input | output
    op: str
    window: _Window | None = None
    pad: tuple[int, int, int, int] = (0, 0, 0, 0)  # F.pad: top, left, channel front, channel back
    macs: int = 0  # dense MACs per candidate (linear layers)


@dataclass
class _Patch:
    """Candidate b's tensor equals the clean map outside rows ``y[b]:y[b]+h``, columns ``x[b]:x[b]+w``."""

    y: Tensor
    x: Tensor
    h: int
    w: int
    vals: Tensor


@dataclass
class _Dense:
    vals: Tensor


@dataclass
class _Value:
    obj: Any


class _Clean:
    """Equal to the cached clean output for every candidate."""


_CLEAN = _Clean()
_State = _Patch | _Dense | _Value | _Clean


class _NeedDense(Exception):
    """An operand the patch path cannot handle: compute the node in full."""


class _Unsupported(Exception):
    """The model cannot be evaluated incrementally (the message says why)."""


# ----------------------------------------------------------------------------------------------------------
# geometry


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[-1])


def _window_range(lo: Tensor, size: Tensor | int, w: _Window, axis: int, out_len: int) -> tuple[Tensor, Tensor]:
    """Per candidate, the first output position whose window meets input ``[lo, lo + size)`` and how many
    (the count is <= 0 when none does, e.g. a strided 1x1 window skipping the patch)."""
    ext, stride, pad = w.ext[axis], w.stride[axis], w.pad[axis]
    first = torch.div(lo - ext + 1 + pad + stride - 1, stride, rounding_mode="floor").clamp_(min=0)
    last = torch.div(lo + size - 1 + pad, stride, rounding_mode="floor").clamp_(max=out_len - 1)
    return first, last - first + 1


def _common(first: Tensor, count: Tensor, out_len: int) -> tuple[Tensor, int]:
    """One size for the batch (the largest count) and offsets shifted inwards to keep it inside the map."""
    m = min(int(count.max()), out_len)
    return torch.minimum(first, torch.full_like(first, out_len - m)).clamp_(min=0), m


def _module_window(module: nn.Module, in_shape: torch.Size, out_shape: torch.Size) -> _Window | str | None:
    """The window of a conv / pooling module, a reason it is not supported, or None (not a window)."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return f"Conv2d with padding_mode={module.padding_mode!r}"
        return _conv_window(module.weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            return "MaxPool2d with return_indices=True"
        return _max_window(module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.AvgPool2d):
        return _avg_window(
            module.kernel_size,
            module.stride,
            module.padding,
            module.ceil_mode,
            module.count_include_pad,
            module.divisor_override,
            in_shape,
            out_shape,
        )
    return None


def _conv_window(
    weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int
) -> _Window | str:
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    dil = _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif any(d * (k - 1) % 2 for k, d in zip(kernel, dil, strict=True)):
            return "Conv2d with padding='same' and an even kernel extent"
        else:
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dil, strict=True))
    st = _pair(stride)

    def apply(window: Tensor, oy: Tensor, ox: Tensor) -> Tensor:
        return F.conv2d(window, weight, bias, st, 0, dil, groups)

    ext = (dil[0] * (kernel[0] - 1) + 1, dil[1] * (kernel[1] - 1) + 1)
    macs = int(weight.shape[0]) * int(weight.shape[1]) * kernel[0] * kernel[1]
    return _Window(ext, st, _pair(padding), 0.0, apply, macs)


def _max_window(kernel: Any, stride: Any, padding: Any, dilation: Any) -> _Window:
    k, d = _pair(kernel), _pair(dilation)
    st = _pair(stride) if stride else k

    def apply(window: Tensor, oy: Tensor, ox: Tensor) -> Tensor:
        return F.max_pool2d(window, k, st, 0, d)

    return _Window((d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1), st, _pair(padding), -math.inf, apply)


def _avg_window(
    kernel: Any,
    stride: Any,
    padding: Any,
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
    in_shape: torch.Size,
    out_shape: torch.Size,
) -> _Window:
    """Average pooling as a sum over the window divided by the layer's own divisor at each output."""
    k = _pair(kernel)
    st = _pair(stride) if stride else k
    p = _pair(padding)
    oh, ow = int(out_shape[-2]), int(out_shape[-1])
    ones = torch.ones(1, 1, int(in_shape[-2]), int(in_shape[-1]), dtype=torch.float64)
    if divisor_override:
        divisor = torch.full((1, 1, oh, ow), float(divisor_override), dtype=torch.float64)
    else:
        if count_include_pad:  # padding counts, what lies beyond it (ceil_mode's last window) does not
            ones = F.pad(ones, (p[1], p[1], p[0], p[0]), value=1.0)
            pooled_pad = (0, 0)
        else:
            pooled_pad = p
        divisor = F.avg_pool2d(ones, k, st, pooled_pad, ceil_mode, True, 1)[..., :oh, :ow]
    cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def apply(window: Tensor, oy: Tensor, ox: Tensor) -> Tensor:
        total = F.avg_pool2d(window, k, st, 0, False, True, 1)
        key = (window.dtype, window.device)
        if key not in cache:
            cache[key] = divisor.to(window.device, window.dtype)
        m, n = total.shape[-2:]
        return total / _gather_window(cache[key], oy, ox, m, n, 0.0)

    return _Window((k[0], k[1]), st, p, 0.0, apply)


def _slice_window(index: Any, in_shape: torch.Size) -> tuple[_Window | None, Any]:
    """``x[index]`` on a 4-D tensor as a window (kernel 1, the slice's step and start), or None.

    Returns the window and the channel index to apply to the values.
    """
    idx = index if isinstance(index, tuple) else (index,)
    if Ellipsis in idx:
        at = idx.index(Ellipsis)
        idx = idx[:at] + (slice(None),) * (4 - len(idx) + 1) + idx[at + 1 :]
    idx = idx + (slice(None),) * (4 - len(idx))
    if len(idx) != 4 or not all(isinstance(i, slice) for i in idx) or idx[0] != slice(None):
        return None, None
    starts, steps = [], []
    for part, length in zip(idx[2:], in_shape[2:], strict=True):
        start, _stop, step = part.indices(int(length))
        if step < 1:
            return None, None
        starts.append(start)
        steps.append(step)
    channel = idx[1]

    def apply(window: Tensor, oy: Tensor, ox: Tensor) -> Tensor:
        return window[:, channel, :: steps[0], :: steps[1]]

    return _Window((1, 1), (steps[0], steps[1]), (-starts[0], -starts[1]), 0.0, apply), channel


# ----------------------------------------------------------------------------------------------------------
# windows and patches


def _gather_window(clean: Tensor, wy: Tensor, wx: Tensor, wh: int, ww: int, fill: float) -> Tensor:
    """``(B, C, wh, ww)``: for each candidate b the window at rows ``wy[b]:``, columns ``wx[b]:`` of the clean
    map ``(1, C, H, W)``, positions outside the map filled with ``fill``."""
    b = wy.shape[0]
    _, c, h, w = clean.shape
    y_min, y_max, x_min, x_max = (int(v) for v in torch.stack([wy.min(), wy.max(), wx.min(), wx.max()]))
    pt, pb = max(0, -y_min), max(0, y_max + wh - h)
    pl, pr = max(0, -x_min), max(0, x_max + ww - w)
    if pt or pb or pl or pr:
        clean = F.pad(clean, (pl, pr, pt, pb), value=fill)
    if y_min == y_max and x_min == x_max:
        y, x = y_min + pt, x_min + pl
        return clean[:, :, y : y + wh, x : x + ww].expand(b, c, wh, ww).clone()
    width = w + pl + pr
    rows = (wy + pt)[:, None, None] + torch.arange(wh, device=wy.device)[None, :, None]
    cols = (wx + pl)[:, None, None] + torch.arange(ww, device=wy.device)[None, None, :]
    index = (rows * width + cols).view(b, 1, wh * ww).expand(b, c, wh * ww)
    flat = clean.reshape(1, c, -1).expand(b, c, clean.shape[-2] * width)
    return torch.gather(flat, 2, index).view(b, c, wh, ww)


def _paste(window: Tensor, patch: _Patch, wy: Tensor, wx: Tensor) -> Tensor:
    """Write the patch's values into windows ``(B, C, wh, ww)`` at rows ``wy``, columns ``wx`` (clipped)."""
    b, c, wh, ww = window.shape
    h, w = patch.h, patch.w
    ry, rx = patch.y - wy, patch.x - wx
    y_min, y_max, x_min, x_max = (int(v) for v in torch.stack([ry.min(), ry.max(), rx.min(), rx.max()]))
    if y_min == y_max and x_min == x_max and y_min >= 0 and x_min >= 0 and y_min + h <= wh and x_min + w <= ww:
        window[:, :, y_min : y_min + h, x_min : x_min + w] = patch.vals
        return window
    rows = ry[:, None, None] + torch.arange(h, device=ry.device)[None, :, None]
    cols = rx[:, None, None] + torch.arange(w, device=rx.device)[None, None, :]
    index = rows * ww + cols  # (B, h, w)
    src = patch.vals.reshape(b, c, h * w)
    if y_min >= 0 and x_min >= 0 and y_max + h <= wh and x_max + w <= ww:
        window.view(b, c, wh * ww).scatter_(2, index.view(b, 1, h * w).expand(b, c, h * w), src)
        return window
    inside = (rows >= 0) & (rows < wh) & (cols >= 0) & (cols < ww)
    index = torch.where(inside, index, wh * ww).view(b, 1, h * w).expand(b, c, h * w)  # the rest: a spare slot
    spare = torch.cat([window.view(b, c, wh * ww), window.new_zeros(b, c, 1)], 2)
    spare.scatter_(2, index, src)
    window.copy_(spare[:, :, : wh * ww].reshape(b, c, wh, ww))
    return window


def _materialise(state: _State, clean: Tensor, wy: Tensor, wx: Tensor, wh: int, ww: int, fill: float) -> Tensor:
    """The tensor of every candidate inside windows ``(wy, wx, wh, ww)``: clean cache with the patch pasted in."""
    window = _gather_window(clean, wy, wx, wh, ww, fill)
    if isinstance(state, _Patch):  # patches lie inside the map: what is outside keeps the fill
        window = _paste(window, state, wy, wx)
    return window


def _same_region(a: _Patch, b: _Patch) -> bool:
    return a is b or (a.h == b.h and a.w == b.w and bool(torch.equal(a.y, b.y)) and bool(torch.equal(a.x, b.x)))


def _dense_of(state: _State, clean: Tensor, batch: int) -> Tensor:
    """The full tensor of every candidate."""
    if isinstance(state, _Dense):
        return state.vals
    if isinstance(state, _Patch):
        zeros = torch.zeros(batch, dtype=torch.long, device=clean.device)
        return _materialise(state, clean, zeros, zeros, clean.shape[-2], clean.shape[-1], 0.0)
    return clean.expand(batch, *clean.shape[1:])


# ----------------------------------------------------------------------------------------------------------
# the evaluator


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _node_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _arg(node: fx.Node, position: int, name: str, default: Any) -> Any:
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


class IncrementalEvaluator:
    """Logits of many k-pixel perturbations of one image, computed from the clean image's cached activations.

    Args:
        model: maps ``(N, C, H, W)`` images to ``(N, K)`` outputs (any ``torch.fx``-traceable model;
            others are evaluated with the plain forward, see :attr:`fallback_reason`). It is not modified.
        image: ``(C, H, W)``, float in [0, 1] (uint8 is divided by 255): what the model takes.
        dense_fraction: a patch larger than this fraction of its map is computed in full from there on.
        device: where to compute (default: the model's device; the model is not moved).

    Example:
        >>> evaluator = IncrementalEvaluator(model, image)
        >>> out = evaluator.logits(xs, ys, colors)  # == model(apply_pixels(image[None].expand(B, ...), ...))
    """

    fallback_reason: str | None

    def __init__(
        self,
        model: nn.Module,
        image: Tensor,
        *,
        dense_fraction: float = 0.5,
        device: torch.device | str | None = None,
    ) -> None:
        if image.dim() != 3:
            raise ValueError(f"image must be (C, H, W); got shape {tuple(image.shape)}")
        if not 0.0 <= dense_fraction <= 1.0:
            raise ValueError(f"dense_fraction must be in [0, 1]; got {dense_fraction}")
        self.model = model
        self.device = torch.device(device) if device is not None else model_device(model)
        self.dtype = model_dtype(model)
        image = image.to(self.device)
        self.image = (image.to(self.dtype) / 255 if image.dtype == torch.uint8 else image.to(self.dtype)).contiguous()
        self.dense_fraction = dense_fraction
        self.fallback_reason = None
        self._costs: dict[str, list[float]] = {}
        self._steps: list[_Step] = []
        self._cache: dict[fx.Node, Any] = {}
        try:
            with self._running():
                self._prepare()
                self._self_check()
        except _Unsupported as exc:
            self._fall_back(str(exc))

    # -- public -----------------------------------------------------------------------------------------------
    def for_image(self, image: Tensor) -> IncrementalEvaluator:
        """An evaluator of the same model for another image of the same shape, sharing this one's trace.

        Only the clean activations are recomputed (one pass of the image): the graph, its classification and
        the self-check are the model's, not the image's. A fallen-back evaluator gives a fallen-back one.
        """
        if tuple(image.shape) != tuple(self.image.shape):
            raise ValueError(f"image must have the shape {tuple(self.image.shape)}; got {tuple(image.shape)}")
        other = copy.copy(self)
        image = image.to(self.device)
        other.image = (image.to(self.dtype) / 255 if image.dtype == torch.uint8 else image.to(self.dtype)).contiguous()
        other._costs = {}
        if self.fallback_reason is None:
            with other._running():
                other._fill_cache()
        return other

    def logits(self, xs: Tensor, ys: Tensor, colors: Tensor) -> Tensor:
        """The model's outputs ``(B, K)`` on the image with pixels ``(ys[b, i], xs[b, i])`` set to ``colors[b, i]``.

        Args:
            xs, ys: ``(B, k)`` integer columns and rows.
            colors: ``(B, k, C)``, float in [0, 1] (uint8: divided by 255).
        """
        xs, ys, colors = self._candidates(xs, ys, colors)
        with self._running():
            if self.fallback_reason is not None:
                return self._plain(xs, ys, colors)
            self._costs = {}
            return self._incremental(xs, ys, colors)

    def plain_logits(self, xs: Tensor, ys: Tensor, colors: Tensor) -> Tensor:
        """The same outputs from the plain forward pass of the perturbed images (the reference)."""
        xs, ys, colors = self._candidates(xs, ys, colors)
        with self._running():
            return self._plain(xs, ys, colors)

    def profile(self) -> list[LayerCost]:
        """Per node of the last :meth:`logits` call: its patch's area, whether dense, its time (empty after a fallback)."""
        out = []
        for step in self._steps:
            name = step.node.name
            if name in self._costs:
                area, dense, seconds, macs = self._costs[name]
                out.append(LayerCost(name, step.op, area, bool(dense), seconds, macs))
        return out

    def macs(self, xs: Tensor, ys: Tensor) -> tuple[float, Tensor]:
        """Multiply-accumulates of the convolution and linear layers: the plain forward's per image, and the
        incremental path's ``(B,)`` for each candidate alone (its own patch, not the batch's common size)."""
        if self.fallback_reason is not None:
            return 1.0, torch.ones(xs.shape[0], dtype=torch.float64)
        return self._geometry_macs(xs.to(self.device).long(), ys.to(self.device).long())

    # -- setup ------------------------------------------------------------------------------------------------
    @contextmanager
    def _running(self) -> Iterator[None]:
        with eval_mode(self.model), torch.inference_mode():
            yield

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._steps, self._cache = [], {}
        log.warning("IncrementalEvaluator: using the plain forward pass: %s", reason)

    def _prepare(self) -> None:
        try:
            self.gm = fx.symbolic_trace(self.model)
        except Exception as exc:  # torch.fx raises TraceError, TypeError, ... on data-dependent control flow
            raise _Unsupported(
                f"torch.fx cannot trace {type(self.model).__name__} ({type(exc).__name__}: {exc})"
            ) from exc
        self.modules = dict(self.gm.named_modules())
        for module in self.modules.values():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.track_running_stats:
                raise _Unsupported(f"{type(module).__name__} without running statistics mixes the batch")
        nodes = list(self.gm.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise _Unsupported(f"the model's forward takes {len(placeholders)} inputs, not one image batch")
        self._input = placeholders[0]
        dependent: set[fx.Node] = {self._input}
        for node in nodes:
            if any(n in dependent for n in _node_inputs(node)):
                dependent.add(node)
        self._fill_cache()
        if not isinstance(self._cache[self._output], Tensor):
            raise _Unsupported("the model does not return one tensor")
        for node in nodes:
            if node in dependent:
                try:
                    self._steps.append(self._classify(node))
                except _Unsupported:
                    raise
                except Exception as exc:  # an argument of a form the classification does not expect
                    raise _Unsupported(
                        f"{node.name}: {_op_name(node, self.modules)} ({type(exc).__name__}: {exc})"
                    ) from exc
        last_use: dict[fx.Node, int] = {}
        for i, step in enumerate(self._steps):
            for n in _node_inputs(step.node):
                last_use[n] = i
        self._free_after: list[list[fx.Node]] = [[] for _ in self._steps]
        for n, i in last_use.items():
            self._free_after[i].append(n)

    def _fill_cache(self) -> None:
        """The clean image through the traced graph, every node's output kept."""
        self._cache = {}
        for node in self.gm.graph.nodes:
            args = fx.node.map_arg(node.args, lambda n: self._cache[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: self._cache[n])
            if node.op == "placeholder":
                self._cache[node] = self.image[None]
            elif node.op == "output":
                self._output = node
                self._cache[node] = args[0]
            else:
                self._cache[node] = self._call(node, args, kwargs)

    def _call(self, node: fx.Node, args: Any, kwargs: Any) -> Any:
        """Run one node on given arguments; in-place operations run on copies (the cache must not change)."""
        if node.op == "get_attr":
            value: Any = self.gm
            for part in str(node.target).split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            if getattr(module, "inplace", False):
                args = (args[0].clone(), *args[1:])
            return module(*args, **kwargs)
        if node.op == "call_function":
            at = _INPLACE_POSITION.get(node.target, len(args))
            if kwargs.get("inplace") or (len(args) > at and args[at]) or node.target in _INPLACE_OPERATORS:
                args = (args[0].clone(), *args[1:])
            return node.target(*args, **kwargs)  # type: ignore[operator]
        name = str(node.target)
        self_arg = args[0]
        if name.endswith("_") and not name.endswith("__") and isinstance(self_arg, Tensor):
            self_arg = self_arg.clone()
        return getattr(self_arg, name)(*args[1:], **kwargs)

    def _classify(self, node: fx.Node) -> _Step:
        """The step of an input-dependent node; raises :class:`_Unsupported` for an unknown operation."""
        op = "input" if node.op == "placeholder" else _op_name(node, self.modules)
        if node.op in ("placeholder", "output"):
            return _Step(node, node.op if node.op == "output" else "input", op)
        out = self._cache[node]
        inputs = _node_inputs(node)
        first = inputs[0] if inputs else None
        in_shape = self._cache[first].shape if first is not None and isinstance(self._cache[first], Tensor) else None
        if not isinstance(out, Tensor):
            if (node.op == "call_method" and node.target in ("size", "dim")) or (
                node.target is getattr and node.args[1:] in (("shape",), ("ndim",))
            ):
                return _Step(node, "value", op)
            if all(not isinstance(self._cache[n], Tensor) for n in inputs):
                return _Step(node, "value", op)  # arithmetic on sizes
            raise _Unsupported(f"{node.name}: {op} returns {type(out).__name__}, not a tensor")
        if out.dim() == 0 or out.shape[0] != 1:
            raise _Unsupported(f"{node.name}: {op} does not keep the batch axis (output shape {tuple(out.shape)})")
        spatial = out.dim() == 4 and in_shape is not None and len(in_shape) == 4
        if node.op == "call_module":
            return self._classify_module(node, op, self.modules[str(node.target)], in_shape, out, spatial)
        if node.op == "call_function":
            return self._classify_function(node, op, in_shape, out, spatial)
        return self._classify_method(node, op, in_shape, out, spatial)

    def _classify_module(
        self, node: fx.Node, op: str, module: nn.Module, in_shape: Any, out: Tensor, spatial: bool
    ) -> _Step:
        if isinstance(module, _POINTWISE_MODULES) or (
            isinstance(module, nn.BatchNorm2d) and module.track_running_stats
        ):
            return _Step(node, "pointwise", op)
        if isinstance(module, _DENSE_MODULES):
            macs = module.in_features * module.out_features if isinstance(module, nn.Linear) else 0
            return _Step(node, "dense", op, macs=macs)
        if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and spatial:
            return self._adaptive(node, op, in_shape, out, isinstance(module, nn.AdaptiveMaxPool2d))
        if spatial:
            window = _module_window(module, in_shape, out.shape)
            if isinstance(window, str):
                raise _Unsupported(f"{node.name}: {window}")
            if window is not None:
                return _Step(node, "window", op, window)
        raise _Unsupported(f"{node.name}: module {op} ({node.target}) is not supported")

    def _adaptive(self, node: fx.Node, op: str, in_shape: Any, out: Tensor, is_max: bool) -> _Step:
        (h, w), (oh, ow) = in_shape[-2:], out.shape[-2:]
        if (oh, ow) == (h, w):
            return _Step(node, "identity", op)
        if (oh, ow) == (1, 1) and not is_max:
            return _Step(node, "global", op)
        if h % oh == 0 and w % ow == 0:
            k = (h // oh, w // ow)
            window = _max_window(k, k, 0, 1) if is_max else _avg_window(k, k, 0, False, True, None, in_shape, out.shape)
            return _Step(node, "window", op, window)
        return _Step(node, "dense", op)

    def _const(self, value: Any) -> Any:
        return fx.node.map_arg(value, lambda n: self._cache[n])

    def _classify_function(self, node: fx.Node, op: str, in_shape: Any, out: Tensor, spatial: bool) -> _Step:
        target = node.target
        if target in _POINTWISE_FUNCTIONS:
            return _Step(node, "pointwise", op)
        if target is F.dropout:
            if self._const(_arg(node, 2, "training", True)):
                raise _Unsupported(f"{node.name}: F.dropout with training=True")
            return _Step(node, "pointwise", op)
        if target in _DENSE_FUNCTIONS:
            if target is torch.flatten and self._const(_arg(node, 1, "start_dim", 0)) % out.dim() == 0:
                raise _Unsupported(f"{node.name}: flatten from the batch axis")
            return _Step(node, "dense", op)
        if target is F.adaptive_avg_pool2d and spatial:
            return self._adaptive(node, op, in_shape, out, False)
        if target is torch.mean:
            return self._mean(node, op, in_shape)
        if target is torch.cat:
            return self._cat(node, op, out)
        if target is F.pad:
            return self._pad(node, op, out)
        if target is operator.getitem and spatial:
            window, _channel = _slice_window(node.args[1], in_shape)
            if window is not None:
                return _Step(node, "window", op, window)
        if spatial and target in (F.conv2d, F.max_pool2d, F.avg_pool2d):
            return _Step(node, "window", op, self._function_window(node, in_shape, out))
        raise _Unsupported(f"{node.name}: function {op} is not supported")

    def _function_window(self, node: fx.Node, in_shape: Any, out: Tensor) -> _Window:
        c = self._const
        if node.target is F.conv2d:
            window = _conv_window(
                c(_arg(node, 1, "weight", None)),
                c(_arg(node, 2, "bias", None)),
                c(_arg(node, 3, "stride", 1)),
                c(_arg(node, 4, "padding", 0)),
                c(_arg(node, 5, "dilation", 1)),
                c(_arg(node, 6, "groups", 1)),
            )
            if isinstance(window, str):
                raise _Unsupported(f"{node.name}: {window}")
            return window
        kernel, stride, padding = (
            c(_arg(node, i, k, d)) for i, k, d in ((1, "kernel_size", None), (2, "stride", None), (3, "padding", 0))
        )
        if node.target is F.max_pool2d:
            if c(_arg(node, 6, "return_indices", False)):
                raise _Unsupported(f"{node.name}: max_pool2d with return_indices=True")
            return _max_window(kernel, stride, padding, c(_arg(node, 4, "dilation", 1)))
        return _avg_window(
            kernel,
            stride,
            padding,
            bool(c(_arg(node, 4, "ceil_mode", False))),
            bool(c(_arg(node, 5, "count_include_pad", True))),
            c(_arg(node, 6, "divisor_override", None)),
            in_shape,
            out.shape,
        )

    def _mean(self, node: fx.Node, op: str, in_shape: Any) -> _Step:
        dims = self._const(_arg(node, 1, "dim", None))
        dims = (dims,) if isinstance(dims, int) else dims
        if in_shape is not None and len(in_shape) == 4 and dims is not None and {d % 4 for d in dims} == {2, 3}:
            return _Step(node, "global", op)
        if dims is not None and all(d % len(in_shape) != 0 for d in dims):
            return _Step(node, "dense", op)
        raise _Unsupported(f"{node.name}: mean over the batch axis")

    def _cat(self, node: fx.Node, op: str, out: Tensor) -> _Step:
        dim = self._const(_arg(node, 1, "dim", 0)) % out.dim()
        if dim == 0:
            raise _Unsupported(f"{node.name}: concatenation along the batch axis")
        return _Step(node, "union" if dim == 1 and out.dim() == 4 else "dense", op)

    def _pad(self, node: fx.Node, op: str, out: Tensor) -> _Step:
        pad = list(self._const(_arg(node, 1, "pad", ())))
        mode = self._const(_arg(node, 2, "mode", "constant"))
        if len(pad) > 6:
            raise _Unsupported(f"{node.name}: padding of the batch axis")
        pad += [0] * (6 - len(pad))
        if out.dim() != 4 or mode != "constant" or min(pad) < 0:
            return _Step(node, "dense", op)
        return _Step(node, "pad", op, pad=(pad[2], pad[0], pad[4], pad[5]))

    def _classify_method(self, node: fx.Node, op: str, in_shape: Any, out: Tensor, spatial: bool) -> _Step:
        name = str(node.target)
        if name in _POINTWISE_METHODS:
            return _Step(node, "pointwise", op)
        if name in _DENSE_METHODS:
            return _Step(node, "dense", op)
        if name == "mean":
            return self._mean(node, op, in_shape)
        raise _Unsupported(f"{node.name}: method {op} is not supported")

    def _self_check(self) -> None:
        """Three candidates (corner, edge, centre) both ways; a wrong result means an unknown semantics."""
        c, h, w = self.image.shape
        ys = torch.tensor([[0], [h - 1], [h // 2]], device=self.device)
        xs = torch.tensor([[0], [w // 2], [w // 2]], device=self.device)
        gen = torch.Generator().manual_seed(0)
        colors = torch.rand(3, 1, c, generator=gen, dtype=torch.float64).to(self.device, self.dtype)
        try:
            got = self._incremental(xs, ys, colors)
        except Exception as exc:
            raise _Unsupported(f"self-check: {type(exc).__name__}: {exc}") from exc
        want = self._plain(xs, ys, colors)
        if got.shape != want.shape:
            raise _Unsupported(f"self-check: outputs of shape {tuple(got.shape)}, the forward's {tuple(want.shape)}")
        scale = float(want.abs().max()) + 1e-30
        error = float((got - want).abs().max()) / scale
        if not error <= 1e-3:
            raise _Unsupported(
                f"self-check: the incremental logits differ from the forward's by {error:.2g} (relative)"
            )

    # -- evaluation -------------------------------------------------------------------------------------------
    def _candidates(self, xs: Tensor, ys: Tensor, colors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c, h, w = self.image.shape
        if xs.shape != ys.shape or xs.dim() != 2:
            raise ValueError(f"xs and ys must both be (B, k); got {tuple(xs.shape)} and {tuple(ys.shape)}")
        if colors.shape != (*xs.shape, c):
            raise ValueError(f"colors must be (B, k, C)={(*xs.shape, c)}; got {tuple(colors.shape)}")
        xs, ys = xs.to(self.device).long(), ys.to(self.device).long()
        if xs.numel() and (int(xs.min()) < 0 or int(xs.max()) >= w or int(ys.min()) < 0 or int(ys.max()) >= h):
            raise ValueError(f"pixel positions must lie in the {h}x{w} image")
        colors = colors.to(self.device)
        colors = colors.to(self.dtype) / 255 if colors.dtype == torch.uint8 else colors.to(self.dtype)
        return xs, ys, colors

    def _plain(self, xs: Tensor, ys: Tensor, colors: Tensor) -> Tensor:
        images = self.image[None].expand(xs.shape[0], *self.image.shape)
        return self.model(apply_pixels(images, xs, ys, colors))

    def _incremental(self, xs: Tensor, ys: Tensor, colors: Tensor) -> Tensor:
        """Candidates in groups of similar patch size (k > 1: sorted by the extent of their pixels)."""
        b, k = xs.shape
        if b == 0:
            return self._cache[self._output].expand(0, *self._cache[self._output].shape[1:])
        if k == 1 or b < 256:
            return self._run(xs, ys, colors)
        extent = torch.maximum(ys.amax(1) - ys.amin(1), xs.amax(1) - xs.amin(1))
        order = torch.argsort(extent, stable=True)
        out = torch.empty(
            (b, *self._cache[self._output].shape[1:]), dtype=self._cache[self._output].dtype, device=self.device
        )
        for part in torch.tensor_split(order, 4):
            out[part] = self._run(xs[part], ys[part], colors[part])
        return out

    def _input_patch(self, xs: Tensor, ys: Tensor, colors: Tensor) -> _Patch:
        b, k = xs.shape
        c, h, w = self.image.shape
        y0, x0 = ys.amin(1), xs.amin(1)
        fy, ny = _common(y0, ys.amax(1) - y0 + 1, h)
        fx_, nx = _common(x0, xs.amax(1) - x0 + 1, w)
        vals = _gather_window(self.image[None], fy, fx_, ny, nx, 0.0)
        index = ((ys - fy[:, None]) * nx + (xs - fx_[:, None])).view(b, 1, k).expand(b, c, k)
        vals.view(b, c, ny * nx).scatter_(2, index, colors.permute(0, 2, 1))
        return _Patch(fy, fx_, ny, nx, vals)

    def _run(self, xs: Tensor, ys: Tensor, colors: Tensor) -> Tensor:
        batch = xs.shape[0]
        states: dict[fx.Node, _State] = {}
        result: Tensor | None = None
        for i, step in enumerate(self._steps):
            start = time.perf_counter()
            node = step.node
            if step.kind == "input":
                state: _State = self._densify(self._input_patch(xs, ys, colors), node, batch)
            elif step.kind == "output":
                arg = node.args[0]
                assert isinstance(arg, fx.Node)
                result = _dense_of(states[arg], self._cache[arg], batch)
                state = _CLEAN
            else:
                state = self._evaluate(step, states, batch)
            states[node] = state
            for n in self._free_after[i]:
                states.pop(n, None)
            self._record(step, state, time.perf_counter() - start, batch)
        assert result is not None
        return result

    def _record(self, step: _Step, state: _State, seconds: float, batch: int) -> None:
        out = self._cache[step.node]
        if isinstance(state, _Patch):
            area = state.h * state.w / (out.shape[-2] * out.shape[-1])
        else:
            area = 1.0 if isinstance(state, _Dense) else 0.0
        window = step.window
        if window is not None and window.macs:
            macs = area
        elif step.macs:
            macs = 0.0 if isinstance(state, _Clean) else 1.0
        else:
            macs = 0.0
        old = self._costs.get(step.node.name)
        if old is None:
            self._costs[step.node.name] = [area, float(isinstance(state, _Dense)), seconds, macs]
        else:  # several chunks: the largest patch, the total time
            self._costs[step.node.name] = [
                max(old[0], area),
                max(old[1], float(isinstance(state, _Dense))),
                old[2] + seconds,
                max(old[3], macs),
            ]

    def _densify(self, state: _State, node: fx.Node, batch: int) -> _State:
        """A patch over ``dense_fraction`` of its map becomes dense."""
        if isinstance(state, _Patch):
            clean = self._cache[node]
            if state.h * state.w > self.dense_fraction * clean.shape[-2] * clean.shape[-1]:
                return _Dense(_dense_of(state, clean, batch))
        return state

    def _evaluate(self, step: _Step, states: dict[fx.Node, _State], batch: int) -> _State:
        node = step.node
        inputs = [states.get(n, _CLEAN) for n in _node_inputs(node)]
        if step.kind == "value":
            return _Value(self._value(node, states, batch))
        if all(isinstance(s, _Clean) for s in inputs):
            return _CLEAN
        if step.kind == "identity":
            return inputs[0]
        try:
            if any(isinstance(s, _Dense) for s in inputs) or step.kind == "dense":
                raise _NeedDense
            if step.kind in ("pointwise", "union"):
                return self._pointwise(node, states, batch)
            if step.kind == "window":
                assert step.window is not None
                return self._window(node, step.window, states, batch)
            if step.kind == "global":
                return self._global(node, states, batch)
            if step.kind == "pad":
                return self._shift(node, step.pad, states)
        except _NeedDense:
            pass
        return self._dense(node, states, batch)

    def _value(self, node: fx.Node, states: dict[fx.Node, _State], batch: int) -> Any:
        """A shape or a number: ``x.size()`` of a changed tensor says B candidates."""

        def resolve(n: fx.Node) -> Any:
            state = states.get(n, _CLEAN)
            if isinstance(state, _Value):
                return state.obj
            value = self._cache[n]
            if isinstance(value, Tensor) and n in states:
                return value.expand(batch, *value.shape[1:])
            return value

        return self._call(node, fx.node.map_arg(node.args, resolve), fx.node.map_arg(node.kwargs, resolve))

    def _dense(self, node: fx.Node, states: dict[fx.Node, _State], batch: int) -> _State:
        def resolve(n: fx.Node) -> Any:
            state = states.get(n, _CLEAN)
            if isinstance(state, _Value):
                return state.obj
            value = self._cache[n]
            if n not in states:  # not input-dependent: a parameter, a constant
                return value
            return _dense_of(state, value, batch)

        out = self._call(node, fx.node.map_arg(node.args, resolve), fx.node.map_arg(node.kwargs, resolve))
        return _Dense(out) if isinstance(out, Tensor) else _Value(out)

    def _pointwise(self, node: fx.Node, states: dict[fx.Node, _State], batch: int) -> _State:
        """An elementwise operation (or a channel concatenation) on the union of its operands' patches."""
        shape = self._cache[node].shape
        patches = [(n, s) for n in _node_inputs(node) if isinstance(s := states.get(n, _CLEAN), _Patch)]
        for n, _ in patches:
            if self._cache[n].dim() != 4 or self._cache[n].shape[-2:] != shape[-2:]:
                raise _NeedDense
        if len(patches) == 1 or all(s is patches[0][1] for _, s in patches):
            region = patches[0][1]
        else:
            y0 = torch.stack([s.y for _, s in patches]).amin(0)
            x0 = torch.stack([s.x for _, s in patches]).amin(0)
            y1 = torch.stack([s.y + s.h for _, s in patches]).amax(0)
            x1 = torch.stack([s.x + s.w for _, s in patches]).amax(0)
            fy, h = _common(y0, y1 - y0, shape[-2])
            fx_, w = _common(x0, x1 - x0, shape[-1])
            region = _Patch(fy, fx_, h, w, patches[0][1].vals)

        def resolve(n: fx.Node) -> Any:
            state = states.get(n, _CLEAN)
            if isinstance(state, _Value):
                return state.obj
            if isinstance(state, _Patch) and _same_region(state, region):
                return state.vals
            value = self._cache[n]
            if not isinstance(value, Tensor):
                return value
            if value.dim() == 4 and value.shape[-2:] == shape[-2:] and tuple(shape[-2:]) != (1, 1):
                return _materialise(state, value, region.y, region.x, region.h, region.w, 0.0)
            if (value.dim() >= 3 and any(int(s) != 1 for s in value.shape[-2:])) or (
                value.dim() in (1, 2) and value.shape[-1] != 1
            ):
                raise _NeedDense
            return value

        vals = self._call(node, fx.node.map_arg(node.args, resolve), fx.node.map_arg(node.kwargs, resolve))
        return self._densify(_Patch(region.y, region.x, region.h, region.w, vals), node, batch)

    def _window(self, node: fx.Node, window: _Window, states: dict[fx.Node, _State], batch: int) -> _State:
        """A convolution, pooling or slice: the outputs whose windows meet the input patch."""
        source = _node_inputs(node)[0]
        state = states.get(source, _CLEAN)
        if not isinstance(state, _Patch):
            raise _NeedDense
        clean_in, clean_out = self._cache[source], self._cache[node]
        oh, ow = clean_out.shape[-2:]
        fy, ny = _window_range(state.y, state.h, window, 0, oh)
        fx_, nx = _window_range(state.x, state.w, window, 1, ow)
        if int(ny.max()) <= 0 or int(nx.max()) <= 0:
            return _CLEAN
        fy, ny_ = _common(fy, ny, oh)
        fx_, nx_ = _common(fx_, nx, ow)
        if ny_ * nx_ > self.dense_fraction * oh * ow:
            raise _NeedDense
        wy = fy * window.stride[0] - window.pad[0]
        wx = fx_ * window.stride[1] - window.pad[1]
        wh = (ny_ - 1) * window.stride[0] + window.ext[0]
        ww = (nx_ - 1) * window.stride[1] + window.ext[1]
        vals = window.apply(_materialise(state, clean_in, wy, wx, wh, ww, window.fill), fy, fx_)
        return _Patch(fy, fx_, ny_, nx_, vals)

    def _global(self, node: fx.Node, states: dict[fx.Node, _State], batch: int) -> _State:
        """Global average pooling: the clean mean plus the patch's summed change over the map's area."""
        source = _node_inputs(node)[0]
        state = states.get(source, _CLEAN)
        if not isinstance(state, _Patch):
            raise _NeedDense
        clean_in, clean_out = self._cache[source], self._cache[node]
        base = _gather_window(clean_in, state.y, state.x, state.h, state.w, 0.0)
        change = (state.vals - base).sum((2, 3)) / (clean_in.shape[-2] * clean_in.shape[-1])
        return _Dense(clean_out + change.view(batch, *clean_out.shape[1:]))

    def _shift(self, node: fx.Node, pad: tuple[int, int, int, int], states: dict[fx.Node, _State]) -> _State:
        """Constant ``F.pad``: the patch moves by the spatial padding; its values get the channel padding."""
        source = _node_inputs(node)[0]
        state = states.get(source, _CLEAN)
        if not isinstance(state, _Patch):
            raise _NeedDense
        value = self._const(_arg(node, 3, "value", None))
        vals = F.pad(state.vals, (0, 0, 0, 0, pad[2], pad[3]), value=0.0 if value is None else value)
        return _Patch(state.y + pad[0], state.x + pad[1], state.h, state.w, vals)

    # -- cost model -------------------------------------------------------------------------------------------
    def _geometry_macs(self, xs: Tensor, ys: Tensor) -> tuple[float, Tensor]:
        """Each candidate alone through the graph's geometry: its region per node, the MACs they need."""
        b = xs.shape[0]
        regions: dict[fx.Node, _Regions] = {}
        full, total = 0.0, torch.zeros(b, dtype=torch.float64, device=xs.device)
        for step in self._steps:
            node, out = step.node, self._cache[step.node]
            ins = [regions[n] for n in _node_inputs(node) if n in regions]
            if step.kind == "input":
                dense = torch.zeros(b, dtype=torch.bool, device=xs.device)
                region = _Regions(ys.amin(1), ys.amax(1) + 1, xs.amin(1), xs.amax(1) + 1, dense)
            elif not ins or not isinstance(out, Tensor):
                continue
            elif step.kind in ("pointwise", "union", "pad", "identity"):
                region = _Regions.union(ins).shifted(step.pad[0], step.pad[1])
            elif step.kind == "window" and step.window is not None:
                region, area = ins[0].window(step.window, out.shape[-2], out.shape[-1])
                if step.window.macs:
                    per_map = step.window.macs * out.shape[-2] * out.shape[-1]
                    full += per_map
                    total += torch.where(region.dense, 1.0, area) * per_map
            else:  # global pooling, flatten, linear ...: everything after is computed in full
                region = ins[0].everything()
                full += step.macs
                total += step.macs
            if out.dim() == 4:
                region = region.clipped(out.shape[-2], out.shape[-1], self.dense_fraction)
            regions[node] = region
        return full, total


_BIG = 1 << 40


@dataclass
class _Regions:
    """Per candidate, the changed rows ``[y0, y1)`` and columns ``[x0, x1)`` of a node (empty: y1 <= y0) and
    whether it is dense."""

    y0: Tensor
    y1: Tensor
    x0: Tensor
    x1: Tensor
    dense: Tensor

    @staticmethod
    def union(regions: Sequence[_Regions]) -> _Regions:
        def stack(name: str) -> Tensor:
            return torch.stack([getattr(r, name) for r in regions])

        return _Regions(
            stack("y0").amin(0), stack("y1").amax(0), stack("x0").amin(0), stack("x1").amax(0), stack("dense").any(0)
        )

    def shifted(self, dy: int, dx: int) -> _Regions:
        return _Regions(self.y0 + dy, self.y1 + dy, self.x0 + dx, self.x1 + dx, self.dense)

    def everything(self) -> _Regions:
        return _Regions(self.y0 * 0, self.y1 * 0 + _BIG, self.x0 * 0, self.x1 * 0 + _BIG, torch.ones_like(self.dense))

    def window(self, window: _Window, oh: int, ow: int) -> tuple[_Regions, Tensor]:
        """The outputs of a window operation and their area over the map's."""
        fy, ny = _window_range(self.y0, self.y1 - self.y0, window, 0, oh)
        fx_, nx = _window_range(self.x0, self.x1 - self.x0, window, 1, ow)
        empty = (ny <= 0) | (nx <= 0) | (self.y1 <= self.y0) | (self.x1 <= self.x0)
        area = (ny.clamp(min=0) * nx.clamp(min=0)).double().div(oh * ow).masked_fill(empty, 0.0)
        region = _Regions(
            torch.where(empty, _BIG, fy),
            torch.where(empty, -_BIG, fy + ny),
            torch.where(empty, _BIG, fx_),
            torch.where(empty, -_BIG, fx_ + nx),
            self.dense,
        )
        return region, area

    def clipped(self, h: int, w: int, dense_fraction: float) -> _Regions:
        """Inside an ``h x w`` map; dense once larger than ``dense_fraction`` of it."""
        y0, y1, x0, x1 = self.y0.clamp(min=0), self.y1.clamp(max=h), self.x0.clamp(min=0), self.x1.clamp(max=w)
        large = (y1 - y0).clamp(min=0) * (x1 - x0).clamp(min=0) > dense_fraction * h * w
        return _Regions(y0, y1, x0, x1, self.dense | large)


@dataclass(frozen=True)
class IncrementalCost:
    """What evaluating one-pixel candidates of a model costs, by counting (no timing).

    Attributes:
        full_macs: convolution and linear multiply-accumulates of the plain forward, per candidate.
        incremental_macs: those of the incremental path, per candidate, averaged over pixel positions.
        steps: the input-dependent nodes the incremental path walks on every call (0 after a fallback).
        fallback_reason: why the model is evaluated with the plain forward (None: incremental).
    """

    full_macs: float
    incremental_macs: float
    steps: int
    fallback_reason: str | None

    @property
    def ceiling(self) -> float:
        """``full_macs / incremental_macs``: the most the incremental path can gain (1.0 after a fallback)."""
        if self.fallback_reason is not None:
            return 1.0
        return self.full_macs / self.incremental_macs if self.incremental_macs > 0 else math.inf


def incremental_cost(
    model: nn.Module,
    image_shape: Sequence[int],
    *,
    dense_fraction: float = 0.5,
    positions: int = 1024,
) -> IncrementalCost:
    """The :class:`IncrementalCost` of ``model`` on images of ``image_shape`` ``(C, H, W)``: each pixel
    position alone, on a regular grid of about ``positions`` of them."""
    c, h, w = (int(v) for v in image_shape)
    image = torch.full((c, h, w), 0.5)
    evaluator = IncrementalEvaluator(model, image, dense_fraction=dense_fraction)
    if evaluator.fallback_reason is not None:
        return IncrementalCost(1.0, 1.0, 0, evaluator.fallback_reason)
    step = max(1, int(math.sqrt(h * w / positions)))
    grid_y, grid_x = torch.meshgrid(torch.arange(0, h, step), torch.arange(0, w, step), indexing="ij")
    with torch.inference_mode():
        full, incremental = evaluator.macs(grid_x.reshape(-1, 1), grid_y.reshape(-1, 1))
    return IncrementalCost(float(full), float(incremental.mean()), len(evaluator._steps), None)


def incremental_speedup_ceiling(
    model: nn.Module,
    image_shape: Sequence[int],
    *,
    dense_fraction: float = 0.5,
    positions: int = 1024,
) -> float:
    """The most the incremental path can gain for one-pixel candidates: convolution and linear MACs of the
    plain forward over the incremental path's, averaged over pixel positions (each position alone; a
    regular grid of about ``positions`` of them). 1.0 when the model falls back to the plain forward.

    Memory traffic, the windows' gathers and the framework's overhead are not counted: measured ratios
    are lower (``benchmarks/incremental.py`` prints both).
    """
    return incremental_cost(model, image_shape, dense_fraction=dense_fraction, positions=positions).ceiling
