"""Feature layers of a model: what each capturable name outputs, the default layers, and ``onepixel layers``.

A layer is a module name (recorded with a forward hook) or a ``torch.fx`` node name
(for functional operations, and for the graph nodes of a ``torch.export`` program).
:class:`LayerTable` runs one zero image through a model and lists both with their
output shapes; :func:`default_feature_layers` picks every ResNet block's output, else
every 4-D ReLU, in depth order; :func:`resolve_layers` checks the names a config
gives; :func:`layer_lines` is what ``onepixel layers`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from onepixel.errors import ConfigError
from onepixel.torch_utils import eval_mode, model_device, model_dtype

if TYPE_CHECKING:
    from onepixel.models.sources import SourceModel

Shape = tuple[int, ...]


class LayerTable:
    """What one zero image does in a model: every capturable name with its output shape.

    Attributes:
        modules: module name -> output shape of its last call (None: not a tensor), in
            ``named_modules()`` order; modules the forward pass does not call are left out.
        module_calls: module name -> how often the forward pass calls it.
        module_order: module names in the order of their first call.
        nodes: ``torch.fx`` node name (as capture names them) -> output shape, in execution
            order; None when the model cannot be traced.
        relus, convs: the node names of ReLUs and 2-D convolutions, in execution order.
        node_modules: node name -> the module name of a ``call_module`` node.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        self.modules: dict[str, Shape | None] = {}
        self.module_calls: dict[str, int] = {}
        self.module_order: list[str] = []
        self.nodes: dict[str, Shape | None] | None = None
        self.relus: list[str] = []
        self.convs: list[str] = []
        self.node_modules: dict[str, str] = {}
        x = torch.zeros((1, *input_shape), dtype=model_dtype(model), device=model_device(model))
        with eval_mode(model), torch.no_grad():
            self._run_hooks(model, x)
            self._run_fx(model, x)

    def _run_hooks(self, model: nn.Module, x: torch.Tensor) -> None:
        seen: dict[str, Shape | None] = {}

        def hook_for(name: str) -> Any:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                seen[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                if name not in self.module_calls:
                    self.module_order.append(name)
                self.module_calls[name] = self.module_calls.get(name, 0) + 1

            return hook

        named = [(name, module) for name, module in model.named_modules() if name]
        handles = [module.register_forward_hook(hook_for(name)) for name, module in named]
        try:
            model(x)
        finally:
            for handle in handles:
                handle.remove()
        self.modules = {name: seen[name] for name, _ in named if name in seen}

    def _run_fx(self, model: nn.Module, x: torch.Tensor) -> None:
        from torch import fx

        try:
            from torchvision.models.feature_extraction import NodePathTracer

            tracer = NodePathTracer(autowrap_modules=(math,))  # as onepixel.capture traces
            graph = tracer.trace(model)
            graph_module = fx.GraphModule(tracer.root, graph)
        except Exception:  # not traceable (tracing errors come as many exception types): modules only
            return
        names: dict[Any, str] = dict(tracer.node_to_qualname)
        modules = dict(model.named_modules())
        shapes: dict[str, Shape | None] = {}
        table = self

        class Recorder(fx.Interpreter):
            def run_node(self, node: Any) -> Any:
                out = super().run_node(node)
                name = names.get(node)
                if name is not None and node.op in ("call_module", "call_function", "call_method"):
                    shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
                    if node.op == "call_module":
                        table.node_modules[name] = str(node.target)
                    if _is_relu(node, modules):
                        table.relus.append(name)
                    elif _is_conv(node, modules):
                        table.convs.append(name)
                return out

        try:
            Recorder(graph_module).run(x)
        except Exception:  # a traced graph that does not run as the model does: modules only
            self.relus, self.convs, self.node_modules = [], [], {}
            return
        self.nodes = shapes

    def shape(self, name: str) -> Shape | None:
        """Output shape of layer ``name`` (a node's, else a module's last call)."""
        if self.nodes is not None and name in self.nodes:
            return self.nodes[name]
        return self.modules.get(name)

    def names(self) -> list[str]:
        """Every capturable name: modules, then nodes that are not module names."""
        nodes = [n for n in (self.nodes or {}) if n not in self.modules]
        return [*self.modules, *nodes]


def _relu_targets() -> set[Any]:
    import torch.nn.functional as F

    return {F.relu, torch.relu, torch.relu_, torch.ops.aten.relu.default, torch.ops.aten.relu_.default}


def _conv_targets() -> set[Any]:
    import torch.nn.functional as F

    return {F.conv2d, torch.conv2d, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default}


def _is_relu(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.ReLU)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return node.op == "call_function" and node.target in _relu_targets()


def _is_conv(node: Any, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), nn.Conv2d)
    return node.op == "call_function" and node.target in _conv_targets()


def _resnet_blocks(net: nn.Module) -> list[str] | None:
    """``layerX.Y`` of a torchvision ResNet inside ``net`` (with its prefix), else None."""
    try:
        from torchvision.models import ResNet
    except ImportError:
        return None
    for prefix, module in net.named_modules():
        if isinstance(module, ResNet):
            lead = f"{prefix}." if prefix else ""
            return [f"{lead}layer{i}.{j}" for i in range(1, 5) for j in range(len(getattr(module, f"layer{i}")))]
    return None


def default_feature_layers(net: nn.Module, input_shape: Sequence[int] = (3, 224, 224)) -> list[str]:
    """The layers capture records by default, in execution order, as names relative to ``net``.

    - A torchvision ResNet (also inside ``net``, e.g. a :class:`SourceModel`'s ``net``):
      every residual block's output, ``layer1.0`` ... ``layer4.1`` (ResNet-18: 8 blocks).
    - Any other network: every ReLU whose output is 4-D, in execution order, found with
      ``torch.fx`` and one zero image of ``input_shape`` (``(C, H, W)``) on the network's
      device (``meta`` works): a ReLU module called once is named by its module name (VGG's,
      AlexNet's ``features.1``); one called more often, or a functional ReLU, by its fx node
      name (``layer1.0.relu_1``), since a module hook would not tell its calls apart.
      An exported program's graph (all functional) gives ``relu_default``, ``relu_default_1``, ...
    - No 4-D ReLU: the 2-D convolutions' outputs instead. A network fx cannot trace: its
      ``nn.ReLU`` (else ``nn.Conv2d``) modules with 4-D outputs, in the order they run.
    """
    blocks = _resnet_blocks(net)
    if blocks is not None:
        return blocks
    table = LayerTable(net, input_shape)
    if table.nodes is not None:
        for picks in (table.relus, table.convs):
            chosen = [name for name in picks if _is_4d(table.nodes.get(name))]
            if chosen:
                return [_preferred_name(name, table) for name in chosen]
        return []
    modules = dict(net.named_modules())
    for kind in (nn.ReLU, nn.Conv2d):
        chosen = [n for n in table.module_order if isinstance(modules[n], kind) and _is_4d(table.modules[n])]
        if chosen:
            return chosen
    return []


def _is_4d(shape: Shape | None) -> bool:
    return shape is not None and len(shape) == 4


def _preferred_name(node_name: str, table: LayerTable) -> str:
    module = table.node_modules.get(node_name)
    if module is not None and module == node_name and table.module_calls.get(module) == 1:
        return module
    return node_name


def resolve_layers(key: str, model: SourceModel, layers: Sequence[str]) -> list[str]:
    """``model_sources.NAME.layers`` as capture's names (empty: the model's defaults).

    A name is a module or fx node name of the :class:`SourceModel` (``net.layer4.1``) or of its
    network (``layer4.1``); its output must be 4-D at the dataset's image size.

    Raises:
        ConfigError: an unknown name (listing valid ones) or a layer whose output is not a feature map.
    """
    shape = (model.in_channels, model.image_size, model.image_size)
    if not layers:
        chosen = default_feature_layers(model, shape)
        if not chosen:
            raise ConfigError(f"{key}.layers: {model.arch} has no 4-D ReLU or convolution outputs; name its layers")
        return chosen
    table = LayerTable(model, shape)
    known = set(table.names())
    out: list[str] = []
    unknown: list[str] = []
    for name in layers:
        full = name if name in known else f"net.{name}" if f"net.{name}" in known else None
        if full is None:
            unknown.append(name)
        else:
            out.append(full)
    if unknown:
        valid = default_feature_layers(model, shape) or table.names()
        shown = ", ".join(valid[:8]) + (", ..." if len(valid) > 8 else "")
        raise ConfigError(
            f"{key}.layers: unknown layer(s) {', '.join(map(repr, unknown))}; valid names include {shown} "
            f"(onepixel layers {model.arch} --all lists them)"
        )
    for name in out:
        got = table.shape(name)
        if not _is_4d(got):
            raise ConfigError(
                f"{key}.layers: layer {name!r} outputs {got}, not a (N, C, H, W) feature map; choose conv/block outputs"
            )
    return list(dict.fromkeys(out))


def layer_lines(
    spec: str,
    *,
    size: int | None = None,
    classes: int | None = None,
    channels: int | None = None,
    everything: bool = False,
    run_code: bool = False,
) -> list[str]:
    """What ``onepixel layers SPEC`` prints: the default feature layers with their output shapes, or every name.

    Args:
        spec: a registry name (``lenet``), ``torchvision:NAME``, ``program:FILE.pt2`` or
            ``factory:pkg.mod:fn`` (with ``run_code``).
        size: input side (default: 32; torchvision 224; a program its own input side).
        classes: number of classes (default: 10; torchvision 1000; a program or factory: what it outputs).
        channels: image channels (default 3; a program its own).
        everything: list every capturable name (modules and ``torch.fx`` nodes), not only the defaults.

    Raises:
        ConfigError, DataError: an unknown spec, or a model that cannot be built.
    """
    from onepixel.models import MODEL_NAMES, build_model
    from onepixel.models.programs import export_load, program_input
    from onepixel.models.sources import SOURCE_KINDS, _path, _read_bytes, build_source_model, call_factory

    kind, sep, rest = spec.partition(":")
    model: nn.Module
    if not sep:
        if spec not in MODEL_NAMES:
            raise ConfigError(
                f"layers: {spec!r} is neither a registry model ({', '.join(MODEL_NAMES)}) nor torchvision:NAME, "
                "program:FILE.pt2 or factory:pkg.mod:fn"
            )
        side, chans = size or 32, channels or 3
        model = build_model(spec, num_classes=classes or 10, in_channels=chans, image_size=side)
    else:
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"layers: {spec!r}: the kind before ':' must be one of {', '.join(SOURCE_KINDS)}")
        source: dict[str, Any] = {kind: rest, "run_code": run_code}
        device: str | None = "meta" if kind == "torchvision" else None
        side, chans = size or (224 if kind == "torchvision" else 32), channels or 3
        if kind == "program":
            program = export_load(_read_bytes("layers", _path(Path.cwd(), rest)), f"layers: {rest}")
            _, program_channels, height, _ = program_input(program, f"layers: {rest}")
            chans = channels or (int(program_channels) if isinstance(program_channels, int) else 3)
            side = size or (int(height) if isinstance(height, int) else 32)
            if classes is None:
                classes = _classes_of(program.module(), chans, side)
        elif kind == "factory" and classes is None:
            if not run_code:
                raise ConfigError(f"layers: factory:{rest} runs your code; add --run-code to allow it")
            classes = _classes_of(call_factory(rest, {}, f"layers: factory:{rest}"), chans, side)
        model = build_source_model("layers", source, classes or 1000, chans, side, device=device, base_dir=Path.cwd())
    table = LayerTable(model, (chans, side, side))
    out = [f"# {spec}: {chans}x{side}x{side} images, default feature layers (capture.layers) and their outputs"]
    if everything:
        out[0] = f"# {spec}: {chans}x{side}x{side} images, every capturable name and its output"
        out.append("# modules (forward hooks; one that runs more than once: its last call)")
        out += [_layer_line(name, table.modules[name]) for name in table.modules]
        if table.nodes is None:
            out.append("# torch.fx: the model cannot be traced, so only modules can be captured")
        else:
            out.append("# torch.fx nodes (in execution order)")
            out += [_layer_line(name, shape) for name, shape in table.nodes.items() if name not in table.modules]
        return out
    return out + [_layer_line(name, table.shape(name)) for name in getattr(model, "feature_layers", [])]


def _layer_line(name: str, shape: Shape | None) -> str:
    shown = "x".join(str(s) for s in shape[1:]) if shape is not None and len(shape) > 1 else "-"
    return f"{name:40s} {shown}"


def _classes_of(net: nn.Module, channels: int, side: int) -> int:
    """How many logits ``net`` gives for zero images (1000 when it does not run or gives no logits)."""
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, channels, side, side))
    except Exception:  # build_source_model says why, in one line
        return 1000
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else 1000
