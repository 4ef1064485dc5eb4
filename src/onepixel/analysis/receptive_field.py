"""Theoretical and effective receptive fields of a model's layers.

**Theoretical receptive field** (TRF). Along each image axis, a layer whose units
form a regular grid is described by three numbers (Araujo et al., *Computing
Receptive Fields of Convolutional Neural Networks*, Distill 2019):

- ``size``: how many input pixels one unit depends on (its receptive field's side),
  **unclipped**: padding positions count, so near the border, or when
  ``size`` exceeds the image, fewer real pixels are covered;
- ``stride`` (the "jump"): input pixels between the centres of neighbouring units;
- ``start``: input coordinate of the centre of unit 0 (pixel centres are at integer
  coordinates 0..W-1; padding makes it negative, even windows make it a half).

Unit ``i`` sees input pixels ``start + i * stride ± (size - 1) / 2``. The numbers
are computed from the model's structure: the forward pass is traced with
``torch.fx`` (standard ``torch.nn`` layers are leaves; Sequentials and custom
blocks are traced through, so every module, leaf or not, is a named layer) and
``(size, stride, start)`` is propagated node by node:

- convolution and pooling with kernel ``k``, stride ``s``, padding ``p``, dilation
  ``d``: ``size += d (k - 1) stride``, ``start += (d (k - 1) / 2 - p) stride``,
  ``stride *= s``; adaptive pooling from ``n`` to ``o`` positions is pooling with
  ``k = s = n / o`` (only when ``o`` divides ``n``);
- elementwise operations (activations, batch normalisation as used at inference,
  dropout, arithmetic with constants) leave it unchanged;
- residual additions and channel concatenations take the union of the branches'
  fields (the largest field when they are centred alike), which must share a
  stride; slicing ``x[..., a::s, b::s]`` and spatial ``F.pad`` shift and stride it.

Anything else (flattening, linear layers, an operation the tracer does not know)
makes the layers after it "not spatial": asking for one of those is an error.

**Effective receptive field** (ERF, Luo et al., *Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks*, NeurIPS 2016): the
gradient of one unit of a layer (summed over channels) with respect to the input
image, in absolute value, summed over input channels and averaged over images.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.models.feature_extraction import NodePathTracer

from onepixel.errors import ConfigError

__all__ = [
    "ReceptiveField",
    "effective_receptive_field",
    "erf_radius",
    "layer_output",
    "receptive_field_box",
    "theoretical_receptive_fields",
]


@dataclass(frozen=True)
class ReceptiveField:
    """Theoretical receptive field of one layer (the same along both image axes).

    Attributes:
        size: side, in input pixels, of the window one unit depends on; unclipped
            (padding positions count, so it may exceed the image).
        stride: input pixels between the centres of neighbouring units (the "jump").
        start: input coordinate of the centre of unit 0 (pixel centres are integers).
    """

    size: int
    stride: int
    start: float

    @property
    def radius(self) -> float:
        """``(size - 1) / 2``: a pixel at Chebyshev distance ``<= radius`` from a unit's centre is in its field."""
        return (self.size - 1) / 2

    def centre(self, index: int) -> float:
        """Input coordinate of the centre of unit ``index`` along an axis."""
        return self.start + index * self.stride


def receptive_field_box(
    rf: ReceptiveField, unit_y: int, unit_x: int, height: int, width: int
) -> tuple[int, int, int, int]:
    """Input pixels seen by unit ``(unit_y, unit_x)``, clipped to the image.

    Returns:
        ``(y0, y1, x0, x1)``: rows ``y0 <= y < y1`` and columns ``x0 <= x < x1``
        (empty when the field lies outside the image).
    """

    def span(index: int, limit: int) -> tuple[int, int]:
        low = math.ceil(rf.centre(index) - rf.radius)
        return min(max(low, 0), limit), min(max(low + rf.size, 0), limit)

    (y0, y1), (x0, x1) = span(unit_y, height), span(unit_x, width)
    return y0, y1, x0, x1


# ---------------------------------------------------------------------------
# Propagation along one axis: ``low`` is the first input pixel seen by unit 0.


@dataclass(frozen=True)
class _Axis:
    size: int
    jump: int
    low: int

    def window(self, kernel: int, stride: int, padding: int, dilation: int = 1) -> _Axis:
        """After a sliding window (convolution or pooling) over this axis."""
        return _Axis(
            self.size + dilation * (kernel - 1) * self.jump, self.jump * stride, self.low - padding * self.jump
        )

    def sliced(self, first: int, step: int) -> _Axis:
        """After keeping units ``first, first + step, ...``."""
        return _Axis(self.size, self.jump * step, self.low + first * self.jump)

    def padded(self, before: int) -> _Axis:
        """After padding ``before`` units in front."""
        return _Axis(self.size, self.jump, self.low - before * self.jump)


@dataclass(frozen=True)
class _Field:
    """Input-dependent 4-D tensor with a regular grid of units: one ``_Axis`` per image axis (y, x)."""

    y: _Axis
    x: _Axis


@dataclass(frozen=True)
class _Opaque:
    """Input-dependent value without a regular spatial receptive field, and why."""

    reason: str


_State = _Field | _Opaque | None  # None: does not depend on the input (constants, shapes)

_POINTWISE_MODULES = (
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.PReLU,
    nn.Softplus,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_POINTWISE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    operator.pow,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardtanh,
    F.dropout,
    F.batch_norm,
    F.softplus,
}
_POINTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "add",
    "sub",
    "mul",
    "div",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "to",
    "type_as",
    "detach",
    "neg",
    "pow",
}
# positional parameter names of the functional pooling ops (after the input)
_POOL_PARAMS = {
    F.avg_pool2d: ("kernel_size", "stride", "padding"),
    F.max_pool2d: ("kernel_size", "stride", "padding", "dilation"),
}


def _pair(value: Any) -> tuple[int, int]:
    """``k`` or ``(ky, kx)`` -> ``(ky, kx)`` as ints."""
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[-1])  # ATen's lists may hold one value for both axes


def _spatial(node: fx.Node) -> tuple[int, int] | None:
    """``(H, W)`` of a node's 4-D tensor output (from shape propagation), else None."""
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) == 4 else None


def _window(state: _State, kernel: Any, stride: Any, padding: Any, dilation: Any = 1) -> _State:
    """A sliding window applied to both axes of a field."""
    if not isinstance(state, _Field):
        return state
    (ky, kx), (sy, sx), (py, px), (dy, dx) = _pair(kernel), _pair(stride), _pair(padding), _pair(dilation)
    return _Field(state.y.window(ky, sy, py, dy), state.x.window(kx, sx, px, dx))


def _conv(module: nn.Conv2d, state: _State) -> _State:
    padding = module.padding
    if isinstance(padding, str):  # "valid" or "same" (stride 1; PyTorch puts the odd extra unit after)
        padding = tuple(
            0 if padding == "valid" else d * (k - 1) // 2
            for k, d in zip(module.kernel_size, module.dilation, strict=True)
        )
    return _window(state, module.kernel_size, module.stride, padding, module.dilation)


def _adaptive(state: _State, node: fx.Node) -> _State:
    """Adaptive pooling: a regular pooling when the output divides the input, else not spatial."""
    before, after = _spatial(node.args[0]), _spatial(node)  # type: ignore[arg-type]
    if not isinstance(state, _Field) or before is None or after is None:
        return state
    if any(n % o for n, o in zip(before, after, strict=True)):
        return _Opaque(f"adaptive pooling from {before} to {after} has windows of unequal size")
    kernel = tuple(n // o for n, o in zip(before, after, strict=True))
    return _window(state, kernel, kernel, 0)


def _module_state(module: nn.Module, node: fx.Node, state: _State) -> _State:
    """Field after a leaf module."""
    if isinstance(module, _POINTWISE_MODULES):
        return state
    if state is None:
        return None
    if isinstance(module, nn.Conv2d):
        return _conv(module, state)
    if isinstance(module, nn.MaxPool2d):
        return _window(state, module.kernel_size, module.stride, module.padding, module.dilation)
    if isinstance(module, nn.AvgPool2d):
        return _window(state, module.kernel_size, module.stride, module.padding)
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d):
        return _adaptive(state, node)
    return _Opaque(f"{type(module).__name__} ({node.target}) is not a spatial layer")


def _union(states: Sequence[_State], node: fx.Node) -> _State:
    """Field of an output that depends on every branch (residual add, concatenation, broadcast op)."""
    live = [s for s in states if s is not None]
    if not live:
        return None
    opaque = [s for s in live if isinstance(s, _Opaque)]
    if opaque:
        return opaque[0]
    jumps = {(s.y.jump, s.x.jump) for s in live}  # type: ignore[union-attr]
    if len(jumps) > 1:
        return _Opaque(f"{node.name} joins branches with different strides {sorted(jumps)}")

    def merge(axes: list[_Axis]) -> _Axis:
        low = min(a.low for a in axes)
        high = max(a.low + a.size for a in axes)
        return _Axis(high - low, axes[0].jump, low)

    return _Field(merge([s.y for s in live]), merge([s.x for s in live]))  # type: ignore[union-attr]


def _getitem(state: _State, node: fx.Node) -> _State:
    """``x[index]`` on a 4-D field: basic slicing of the spatial axes."""
    if not isinstance(state, _Field):
        return state
    source = node.args[0]
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    if Ellipsis in index:
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (4 - len(index) + 1) + index[at + 1 :]
    index = index + (slice(None),) * (4 - len(index))
    shape = _spatial(source)  # type: ignore[arg-type]
    if len(index) != 4 or shape is None or not all(isinstance(i, slice) for i in index[2:]):
        return _Opaque(f"{node.name}: indexing {node.args[1]!r} is not a slice of the spatial axes")
    axes = []
    for axis, part, extent in zip((state.y, state.x), index[2:], shape, strict=True):
        first, _stop, step = part.indices(extent)
        if step < 1 or not all(isinstance(v, int | None) for v in (part.start, part.step)):
            return _Opaque(f"{node.name}: slice {part!r} is not supported")
        axes.append(axis.sliced(first, step))
    return _Field(*axes)


def _pad(state: _State, node: fx.Node) -> _State:
    """``F.pad(x, pad)``: padding of the last two axes moves unit 0 (constant padding only)."""
    if not isinstance(state, _Field):
        return state
    given = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
    pad = [*cast(Sequence[Any], given), 0, 0, 0, 0]
    return _Field(state.y.padded(int(pad[2])), state.x.padded(int(pad[0])))


def _cat(states: Sequence[_State], node: fx.Node) -> _State:
    """``torch.cat`` along channels (or batch) joins fields; along a spatial axis it is not spatial."""
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if isinstance(dim, int) and dim % 4 in (2, 3) and any(isinstance(s, _Field) for s in states):
        return _Opaque(f"{node.name}: concatenation along a spatial axis")
    return _union(states, node)


_aten = torch.ops.aten
#: ATen operators of a torch.export program (model_sources' program) that act on each position alone
_ATEN_POINTWISE = {
    _aten.relu.default,
    _aten.relu_.default,
    _aten.add.Tensor,
    _aten.add_.Tensor,
    _aten.sub.Tensor,
    _aten.mul.Tensor,
    _aten.div.Tensor,
    _aten.sigmoid.default,
    _aten.tanh.default,
    _aten.hardtanh.default,
    _aten.gelu.default,
    _aten.silu.default,
    _aten.dropout.default,
    _aten.clone.default,
    _aten.batch_norm.default,
    _aten._native_batch_norm_legit_no_training.default,
}


_ATEN_WINDOWS = {
    _aten.conv2d.default,
    _aten.max_pool2d.default,
    _aten.avg_pool2d.default,
    _aten.adaptive_avg_pool2d.default,
}


def _aten_state(node: fx.Node, states: Sequence[_State]) -> _State:
    """Field after an ATen operator of an exported program (one of ``_ATEN_POINTWISE`` or ``_ATEN_WINDOWS``)."""
    target, args = node.target, node.args
    if target in _ATEN_POINTWISE:
        return _union(states, node)
    if target == _aten.conv2d.default:
        weight = args[1].meta.get("tensor_meta") if isinstance(args[1], fx.Node) else None
        if weight is None:
            return _Opaque(f"{node.name}: a convolution whose kernel size is unknown")
        stride, padding, dilation = (args[i] if len(args) > i else default for i, default in ((3, 1), (4, 0), (5, 1)))
        return _window(states[0], tuple(weight.shape[-2:]), stride, padding, dilation)
    if target in (_aten.max_pool2d.default, _aten.avg_pool2d.default):
        kernel = args[1]
        stride = args[2] if len(args) > 2 and args[2] else kernel
        padding = args[3] if len(args) > 3 else 0
        dilation = args[4] if len(args) > 4 and target == _aten.max_pool2d.default else 1
        return _window(states[0], kernel, stride, padding, dilation)
    return _adaptive(states[0], node)  # adaptive_avg_pool2d


def _function_state(node: fx.Node, states: Sequence[_State]) -> _State:
    """Field after a ``call_function`` node; ``states`` are those of its node arguments, in order."""
    target = node.target
    if target in _ATEN_POINTWISE or target in _ATEN_WINDOWS:
        return _aten_state(node, states)
    if target in _POINTWISE_FUNCTIONS:
        return _union(states, node)
    if target is operator.getitem:
        return _getitem(states[0] if states else None, node)
    if target is F.pad:
        return _pad(states[0], node)
    if target is torch.cat:
        return _cat(states, node)
    if target in _POOL_PARAMS:
        given = dict(zip(_POOL_PARAMS[target], node.args[1:], strict=False)) | {
            k: v for k, v in node.kwargs.items() if k in _POOL_PARAMS[target]
        }
        kernel = given["kernel_size"]
        stride = given.get("stride") or kernel
        return _window(states[0], kernel, stride, given.get("padding", 0), given.get("dilation", 1))
    if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return _adaptive(states[0], node)
    if all(s is None for s in states):
        return None
    return _Opaque(f"{node.name}: {getattr(target, '__name__', target)} is not a known spatial operation")


def _method_state(node: fx.Node, states: Sequence[_State]) -> _State:
    if node.target in _POINTWISE_METHODS:
        return _union(states, node)
    if all(s is None for s in states):
        return None
    return _Opaque(f"{node.name}: method {node.target} is not a known spatial operation")


def _node_args(node: fx.Node) -> list[fx.Node]:
    """The nodes among a node's (nested) arguments, in order."""
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


class _LayerTracer(NodePathTracer):
    """``torch.fx`` tracer that remembers the output node of every module call, leaf or not.

    As torchvision's ``NodePathTracer`` (which ``get_graph_node_names`` and the capture
    stage use), it also names every node (``node_to_qualname``), so outputs of
    functional operations (e.g. ``layer1.0.add``) can be named too.
    """

    def __init__(self) -> None:
        super().__init__(autowrap_modules=(math,))
        self.outputs: dict[str, list[fx.Node]] = {}

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, fx.Proxy):
            self.outputs.setdefault(self.path_of_module(m), []).append(out.node)
        return out


def _input_state(node: fx.Node) -> _State:
    return _Field(_Axis(1, 1, 0), _Axis(1, 1, 0)) if _spatial(node) else _Opaque("the input is not an image batch")


def _propagate(graph: fx.Graph, modules: dict[str, nn.Module]) -> dict[fx.Node, _State]:
    """State of every node of a shape-propagated graph."""
    states: dict[fx.Node, _State] = {}
    for node in graph.nodes:
        inputs = [states[n] for n in _node_args(node)]
        if node.op in ("call_module", "call_function", "call_method") and "tensor_meta" not in node.meta:
            states[node] = None  # not a tensor (e.g. x.size()): depends on the input's shape only
        elif node.op == "placeholder":
            states[node] = _input_state(node)
        elif node.op == "get_attr":
            states[node] = None
        elif node.op == "call_module":
            states[node] = _module_state(modules[node.target], node, _union(inputs, node))
        elif node.op == "call_function":
            states[node] = _function_state(node, inputs)
        elif node.op == "call_method":
            states[node] = _method_state(node, inputs)
        else:
            states[node] = inputs[0] if inputs else None
    return states


def _trace(model: nn.Module, input_shape: tuple[int, int, int]) -> tuple[_LayerTracer, fx.GraphModule]:
    """Trace ``model`` and propagate shapes for one zero image of ``input_shape`` (eval mode, restored after)."""
    tracer = _LayerTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # torch.fx raises TraceError, TypeError, ... on data-dependent control flow
        raise ConfigError(
            f"model {type(model).__name__}: cannot be traced with torch.fx ({exc.__class__.__name__}: {exc})"
        ) from exc
    module = fx.GraphModule(model, graph)
    reference: torch.Tensor | None = next(iter(model.parameters()), None)
    if reference is None:
        reference = next(iter(model.buffers()), torch.empty(0))
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(module).propagate(torch.zeros(1, *input_shape, dtype=reference.dtype, device=reference.device))
    finally:
        for m, mode in training.items():
            m.training = mode
    return tracer, module


def _layer_field(name: str, tracer: _LayerTracer, states: dict[fx.Node, _State]) -> ReceptiveField:
    """The receptive field of module ``name``'s output, or a ConfigError saying why there is none."""
    nodes = tracer.outputs.get(name) or [node for node, qualname in tracer.node_to_qualname.items() if qualname == name]
    if not nodes:
        known = ", ".join(list(tracer.outputs)[:8])
        raise ConfigError(f"layers: {name!r} is not a module or node of the model's forward pass (e.g. {known})")
    if len(nodes) > 1:
        raise ConfigError(
            f"layers: {name!r} is called {len(nodes)} times in the forward pass; its receptive field is ambiguous"
        )
    state = states[nodes[0]]
    if not isinstance(state, _Field):
        why = state.reason if isinstance(state, _Opaque) else "it does not depend on the input"
        raise ConfigError(f"layers: {name!r} has no spatial receptive field: {why}")
    if state.y != state.x:
        raise ConfigError(
            f"layers: {name!r} has different receptive fields along y {state.y} and x {state.x}; only square ones are supported"
        )
    axis = state.x
    return ReceptiveField(size=axis.size, stride=axis.jump, start=axis.low + (axis.size - 1) / 2)


def theoretical_receptive_fields(
    model: nn.Module, input_shape: tuple[int, int, int], layers: Iterable[str] | None = None
) -> dict[str, ReceptiveField]:
    """Theoretical receptive field of each named layer, computed from the model's structure.

    Args:
        model: any model ``torch.fx`` can trace (every model of ``onepixel.models``);
            its train/eval mode is restored afterwards. One zero image is run through
            it to learn the shapes (for adaptive pooling and slicing).
        input_shape: ``(C, H, W)`` of one input image.
        layers: module names as in ``model.named_modules()`` (default: ``model.feature_layers``),
            or node names of functional operations as torchvision's ``get_graph_node_names`` lists them.

    Returns:
        ``{layer: ReceptiveField}`` in the order given.

    Raises:
        ConfigError: a name that is not a module called once in ``forward``, or a
            layer without a regular spatial field (e.g. after flattening).
    """
    names = list(getattr(model, "feature_layers", []) if layers is None else layers)
    tracer, module = _trace(model, tuple(input_shape))  # type: ignore[arg-type]
    states = _propagate(module.graph, dict(module.named_modules()))
    return {name: _layer_field(name, tracer, states) for name in names}


# ---------------------------------------------------------------------------
# Effective receptive field


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass at the layer."""


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Output of module ``layer`` for input ``x`` (the rest of the forward pass is skipped).

    Raises:
        ConfigError: ``layer`` is not a module of ``model`` or its output is not 4-D.
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError as exc:
        raise ConfigError(f"layer: {layer!r} is not a module of {type(model).__name__}") from exc
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured.append(output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured or captured[0].dim() != 4:
        raise ConfigError(f"layer: {layer!r} does not return a 4-D feature map")
    return captured[0]


def effective_receptive_field(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    unit: tuple[int, int] | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Gradient-based effective receptive field of one unit of ``layer`` (Luo et al. 2016).

    For each image, the output of ``layer`` at ``unit`` is summed over channels and
    differentiated with respect to the input image (float in [0, 1]); the ERF is
    the absolute gradient summed over input channels, averaged over images. The
    model is evaluated in eval mode (restored afterwards), so images do not
    interact through batch normalisation.

    Args:
        model: returns logits for float images ``(N, C, H, W)`` in [0, 1].
        images: ``(N, C, H, W)`` uint8 images in [0, 255] or float images in [0, 1].
        layer: module name (e.g. ``model.feature_layers[-1]``); its output must be 4-D.
        unit: ``(row, column)`` in the layer's grid; default the centre ``(H_l // 2, W_l // 2)``.
        batch_size: images per forward/backward pass.

    Returns:
        ``(H, W)`` float64 array: mean over images of ``sum_c |d unit / d x[c]|``.
    """
    if len(images) == 0:
        raise ConfigError("effective receptive field: no images given")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    training = model.training
    model.eval()
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    try:
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            x = chunk.to(device, torch.float64) / 255 if chunk.dtype == torch.uint8 else chunk.to(device, torch.float64)
            x = x.to(dtype).requires_grad_(True)
            out = layer_output(model, layer, x)
            row, col = unit if unit is not None else (out.shape[-2] // 2, out.shape[-1] // 2)
            if not (0 <= row < out.shape[-2] and 0 <= col < out.shape[-1]):
                raise ConfigError(f"unit: {(row, col)} is outside layer {layer!r}'s {tuple(out.shape[-2:])} grid")
            (grad,) = torch.autograd.grad(out[:, :, row, col].sum(), x)
            total += grad.abs().sum(dim=1).sum(dim=0).double().cpu()
    finally:
        model.train(training)
    return (total / len(images)).numpy()


def erf_radius(erf: np.ndarray, centre: tuple[float, float], mass: float = 0.95) -> float:
    """Smallest Chebyshev radius around ``centre`` holding at least ``mass`` of the ERF's total.

    Args:
        erf: ``(H, W)`` non-negative map.
        centre: ``(y, x)`` input coordinate (e.g. the unit's receptive-field centre).
        mass: fraction in (0, 1].

    Returns:
        The radius ``r`` (a half-integer or integer distance to a pixel centre);
        NaN when the map is all zero.
    """
    total = float(erf.sum())
    if total <= 0:
        return float("nan")
    yy, xx = np.indices(erf.shape)
    dist = np.maximum(np.abs(yy - centre[0]), np.abs(xx - centre[1])).ravel()
    order = np.argsort(dist, kind="stable")
    cumulative = np.cumsum(erf.ravel()[order]) / total
    reached = cumulative >= mass - 1e-12
    return float(dist[order][np.argmax(reached)])
