"""Models from outside the registry: torchvision classification models, torch.export programs and a user's factory.

A config's ``model_sources`` names where each such model comes from (see
``config.schema.yaml``); :func:`build_source_model` makes it a :class:`SourceModel`,
which behaves like the registry's models: it takes float32 images ``(N, C, H, W)`` in
``[0, 1]`` at the dataset's size, resizes them to the network's ``input_size`` and
normalises them (``mean``, ``std``) *inside itself*, and returns logits. So the attacks
work on the dataset's raw 8-bit pixels whatever the network expects.

- ``torchvision: resnet50``: ``torchvision.models.get_model(arch, weights=None, num_classes=...)``;
  ``weights: IMAGENET1K_V2`` downloads those weights (checked against their published
  hash) and takes their ``mean``, ``std`` and crop size as defaults; ``state_dict: FILE``
  loads a file with ``torch.load(weights_only=True)``; neither: fresh weights seeded with ``seed``.
- ``program: FILE.pt2``: a ``torch.export.save`` archive. ``torch.export.load`` unpickles
  parts of it with ``weights_only=False``, so the archive is checked first
  (:func:`onepixel.models.programs.check_program`): every pickle in it must load with ``weights_only=True`` (or
  name only torch's tensor-rebuild globals), its graph's shape expressions and names
  must be plain, and compiled code (AOTInductor) is refused. It is then loaded with
  ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, so no pickled code runs.
- ``factory: package.module:function``: called with ``kwargs``; this runs the user's code,
  so it needs ``run_code: true`` (and ``load_checkpoint(..., allow_code=True)`` later).

Feature layers (``model.feature_layers``, what ``capture`` records by default) are names
relative to the :class:`SourceModel`, whose network is its submodule ``net``
(``net.layer1.0``, ``net.relu_default_1``): module names, or ``torch.fx`` node names as
``torchvision.models.feature_extraction.NodePathTracer`` gives them (:mod:`onepixel.capture`
takes both). :func:`default_feature_layers` chooses them.

Checkpoints (:func:`onepixel.models.save_checkpoint` with ``name=model.arch`` and
``build_kwargs=model.build_kwargs``) are rebuilt by :func:`rebuild_source_model`:
a torchvision model from its name alone (no user code), a program from the archive's
bytes, which the checkpoint holds (``program._extra_state``, a uint8 tensor) and which are
checked again, a factory model only with ``allow_code=True``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onepixel.errors import ConfigError, DataError
from onepixel.files import one_line
from onepixel.models.checkpoint import SHOWN_KEYS, _fit_problems, _is_state_dict, _torch_load
from onepixel.models.layers import default_feature_layers, resolve_layers
from onepixel.models.normalize import Normalize
from onepixel.models.programs import check_program, export_load, load_program, program_input
from onepixel.torch_utils import eval_mode, model_device, model_dtype

SOURCE_KINDS = ("torchvision", "program", "factory")
#: torchvision builders that, given weights, also set ``transform_input=True`` (their weights expect it)
_TRANSFORM_INPUT_ARCHS = ("googlenet", "inception_v3")
#: a few torchvision names for error messages
_EXAMPLES = ("resnet18", "resnet50", "vgg16", "alexnet", "densenet121", "mobilenet_v3_large", "vit_b_16")


# ---------------------------------------------------------------------------
# The model


class Resize(nn.Upsample):
    """Bilinear resize of ``(N, C, H, W)`` to ``size x size`` (``align_corners=False``, no antialiasing).

    Differentiable and deterministic; a ``torch.nn`` module, so ``torch.fx`` keeps it a leaf.
    """

    def __init__(self, size: int) -> None:
        super().__init__(size=(size, size), mode="bilinear", align_corners=False)


class ProgramBytes(nn.Module):
    """The bytes of a ``.pt2`` archive, kept in the state_dict as ``<name>._extra_state`` (a uint8 tensor).

    They are not a buffer, so ``model.to(device)`` leaves them on the CPU; a checkpoint that
    holds them is self-contained (:func:`rebuild_source_model` checks and loads them).
    """

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = bytes(data)

    def get_extra_state(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8)

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise DataError("program._extra_state: expected the .pt2 archive's bytes as a 1-D uint8 tensor")
        data = state.cpu().numpy().tobytes()
        if data != self.data:
            raise DataError("program._extra_state: the state_dict holds another .pt2 archive than the model's")

    def extra_repr(self) -> str:
        return f"{len(self.data):,d} bytes, sha256 {hashlib.sha256(self.data).hexdigest()[:12]}"


class SourceModel(nn.Module):
    """A network from outside the registry, wrapped as the registry's models are.

    ``forward``: float32 ``(N, C, H, W)`` in ``[0, 1]`` at the dataset's size ->
    ``resize`` (bilinear to ``input_size``, only when it differs from ``image_size``) ->
    ``normalize`` (``(x - mean) / std``) -> ``net`` -> logits ``(N, num_classes)``.

    Args:
        net: the network, taking normalised images of side ``input_size``.
        arch, in_channels, image_size: its name and the dataset's images (``C``, ``H = W``).
        input_size: the side ``net`` takes (0: ``image_size``, no resize).
        mean, std: per-channel normalisation in [0, 1] units (default 0 and 1).
        layers: feature layers (default: :func:`default_feature_layers` at the dataset's size).
        build_kwargs: more plain data to keep in ``build_kwargs`` (``num_classes``, the source's kwargs).
        program: a program model's ``.pt2`` bytes, kept as :class:`ProgramBytes` (``program``).

    Attributes:
        arch: ``"torchvision:resnet18"``, ``"program:<file name>"`` or ``"factory:pkg.mod:fn"``.
        feature_layers: names of the layers capture records by default (module names or
            ``torch.fx`` node names, relative to this model: ``net.layer1.0``).
        build_kwargs: plain data that, with ``arch`` and the state_dict, rebuilds the model
            (:func:`rebuild_source_model`); pass it to ``save_checkpoint``.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        arch: str,
        in_channels: int,
        image_size: int,
        input_size: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        layers: Sequence[str] | None = None,
        build_kwargs: Mapping[str, Any] | None = None,
        program: bytes | None = None,
    ) -> None:
        super().__init__()
        size = input_size or image_size
        self.resize: nn.Module = Resize(size) if size != image_size else nn.Identity()
        self.normalize = Normalize(in_channels, mean, std)
        self.net = net
        if program is not None:
            self.program = ProgramBytes(program)
        self.arch = arch
        self.in_channels = in_channels
        self.image_size = image_size
        self.input_size = size
        self.build_kwargs: dict[str, Any] = {
            **dict(build_kwargs or {}),
            "in_channels": in_channels,
            "image_size": image_size,
            "input_size": size,
            "mean": self.normalize.mean.flatten().tolist(),
            "std": self.normalize.std.flatten().tolist(),
        }
        self.feature_layers: list[str] = (
            list(layers) if layers is not None else default_feature_layers(self, (in_channels, image_size, image_size))
        )
        self.build_kwargs["layers"] = list(self.feature_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` in [0, 1] -> logits ``(N, num_classes)``."""
        return self.net(self.normalize(self.resize(x)))

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, input {self.in_channels}x{self.image_size}x{self.image_size} -> {self.input_size}"


# ---------------------------------------------------------------------------
# Building from a config's model_sources entry


def build_source_model(
    name: str,
    source: Mapping[str, Any],
    num_classes: int,
    in_channels: int,
    image_size: int,
    *,
    seed: int = 0,
    base_dir: Path | None = None,
    device: str | torch.device | None = None,
) -> SourceModel:
    """Build model ``name`` of a config's ``model_sources`` (see the module docstring).

    Args:
        name: the model's name (the key under ``model_sources``), for messages.
        source: its entry: one of ``torchvision``, ``program``, ``factory``, and ``kwargs``
            (keyword arguments of the torchvision builder or of the factory), ``run_code``,
            ``weights``, ``state_dict``, ``mean``, ``std`` (default: the weights', else 0 and 1),
            ``input_size`` (0: the weights' crop size, a program's static side, else the
            dataset's) and ``layers`` (module or fx node names, of the model or of its ``net``;
            empty: :func:`default_feature_layers`).
        num_classes, in_channels, image_size: the dataset's (the network must output
            ``num_classes`` logits).
        seed: seeds the fresh weights (torchvision or factory without weights); the caller's
            random state is left as it was.
        base_dir: where relative ``program`` and ``state_dict`` paths are (default: the working directory).
        device: where to build the network; ``"meta"`` gives shapes only (no weights: ``onepixel layers``).

    Returns:
        The model (train mode), with ``arch``, ``feature_layers`` and ``build_kwargs``.

    Raises:
        ConfigError: a key that is missing, unknown, of the wrong kind, or refused (``run_code``).
        DataError: a file that is missing, corrupt, refused (pickled code) or of another architecture.
    """
    key = f"model_sources.{name}"
    kind = _source_kind(key, source)
    _check_sizes(key, num_classes, in_channels, image_size)
    base = Path.cwd() if base_dir is None else Path(base_dir)
    mean, std = source.get("mean"), source.get("std")
    input_size = int(source.get("input_size") or 0)
    kwargs = dict(source.get("kwargs") or {})
    if kind != "torchvision" and source.get("weights"):
        raise ConfigError(f"{key}.weights: only torchvision models have named weights; give a state_dict file instead")
    if source.get("weights") and source.get("state_dict"):
        raise ConfigError(f"{key}: give weights or state_dict, not both")
    build: dict[str, Any] = {"source": name, "num_classes": num_classes}
    program: bytes | None = None
    with _seeded(seed), _building_on(device):
        if kind == "torchvision":
            arch_name = str(source["torchvision"])
            arch = f"torchvision:{arch_name}"
            net, defaults = _torchvision_net(key, arch_name, num_classes, in_channels, kwargs, source.get("weights"))
            mean = defaults.get("mean") if mean is None else mean
            std = defaults.get("std") if std is None else std
            input_size = input_size or int(defaults.get("input_size") or 0)
            build.update(kwargs=kwargs, weights=source.get("weights"))
        elif kind == "program":
            file = _path(base, source["program"])
            arch = f"program:{file.name}"
            program = _read_bytes(f"{key}.program", file)
            net, program_size = load_program(program, f"{key}.program: {file}", in_channels)
            input_size = input_size or program_size
            build.update(program=file.name, program_sha256=hashlib.sha256(program).hexdigest())
        else:
            spec = str(source["factory"])
            arch = f"factory:{spec}"
            if source.get("run_code") is not True:
                raise ConfigError(f"{key}.factory runs your code ({spec}): set {key}.run_code: true to allow it")
            net = call_factory(spec, kwargs, f"{key}.factory")
            build.update(kwargs=kwargs)
        if source.get("state_dict"):
            file = _path(base, source["state_dict"])
            try:
                state_dict = read_state_dict(file)
            except DataError as exc:
                raise DataError(f"{key}.state_dict: {exc}") from exc
            fit_state_dict(f"{key}.state_dict: {file}", arch, net, state_dict, num_classes)
            if not _on_meta(net):
                net.load_state_dict(state_dict)
            build["state_dict"] = str(file)
    _check_mean_std(key, mean, std, in_channels)
    model = SourceModel(
        net,
        arch=arch,
        in_channels=in_channels,
        image_size=image_size,
        input_size=input_size,
        mean=mean,
        std=std,
        layers=[],
        build_kwargs=build,
        program=program,
    )
    if device is not None:
        model.to(device)
    check_logits(key, model, num_classes)
    model.feature_layers = resolve_layers(key, model, source.get("layers") or [])
    model.build_kwargs["layers"] = list(model.feature_layers)
    return model


def _source_kind(key: str, source: Mapping[str, Any]) -> str:
    if not isinstance(source, Mapping):
        raise ConfigError(f"{key}: must be a mapping with one of {', '.join(SOURCE_KINDS)}")
    kinds = [kind for kind in SOURCE_KINDS if source.get(kind)]
    if len(kinds) != 1:
        got = ", ".join(kinds) if kinds else "none"
        raise ConfigError(f"{key}: give exactly one of {', '.join(SOURCE_KINDS)} (got {got})")
    return kinds[0]


def _check_sizes(key: str, num_classes: int, in_channels: int, image_size: int) -> None:
    for label, value, low in (
        ("num_classes", num_classes, 2),
        ("in_channels", in_channels, 1),
        ("image_size", image_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{key}: the dataset's {label} {value!r} must be an integer >= {low}")


def _check_mean_std(key: str, mean: Any, std: Any, in_channels: int) -> None:
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != in_channels:
            raise ConfigError(
                f"{key}.{label}: {list(values)} has {len(values)} value(s); the dataset's images have "
                f"{in_channels} channel(s), give one per channel"
            )
    if std is not None and min(float(s) for s in std) <= 0:
        raise ConfigError(f"{key}.std: {list(std)} must all be > 0")


def _path(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(str(value)))
    return path if path.is_absolute() else base / path


def _read_bytes(label: str, file: Path) -> bytes:
    if not file.is_file():
        raise DataError(f"{label}: {file}: file not found")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise DataError(f"{label}: {file}: cannot read it ({exc.strerror or exc})") from exc


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Fresh weights made in the block come from ``torch.manual_seed(seed)``; the caller's CPU random state is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def _building_on(device: str | torch.device | None) -> Iterator[None]:
    if device is None:
        yield
    else:
        with torch.device(device):
            yield


def _on_meta(net: nn.Module) -> bool:
    return any(t.is_meta for t in (*net.parameters(), *net.buffers()))


# ---------------------------------------------------------------------------
# torchvision


def _torchvision_net(
    key: str, arch: str, num_classes: int, in_channels: int, kwargs: dict[str, Any], weights: str | None
) -> tuple[nn.Module, dict[str, Any]]:
    """The torchvision network (weights loaded when named) and the weights' mean, std, input size."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(
            f"{key}.torchvision: {arch!r} is not a torchvision classification model ({hint}e.g. "
            f"{', '.join(_EXAMPLES)}, ...: torchvision.models.list_models(module=torchvision.models) lists all {len(known)})"
        )
    if in_channels != 3:
        raise ConfigError(
            f"{key}.torchvision: {arch} takes 3-channel (RGB) images; the dataset has {in_channels} channel(s)"
        )
    defaults: dict[str, Any] = {}
    state_dict = None
    if weights:
        enum = torchvision.models.get_model_weights(arch)
        try:
            chosen = enum[weights]
        except KeyError:
            raise ConfigError(
                f"{key}.weights: {weights!r} is not a weights name of torchvision's {arch}; allowed: {', '.join(enum.__members__)}"
            ) from None
        classes = len(chosen.meta.get("categories") or [])
        if classes and classes != num_classes:
            raise ConfigError(
                f"{key}.weights: {arch} {chosen.name} has {classes} classes, the dataset has {num_classes}; "
                f"train it on the dataset (no weights) or give a state_dict with {num_classes} classes"
            )
        transforms = chosen.transforms()
        defaults = {
            "mean": [float(m) for m in transforms.mean],
            "std": [float(s) for s in transforms.std],
            "input_size": int(transforms.crop_size[0]),
        }
        if arch in _TRANSFORM_INPUT_ARCHS:
            kwargs.setdefault("transform_input", True)
        if torch.get_default_device().type != "meta":
            try:
                state_dict = chosen.get_state_dict(progress=False, check_hash=True, weights_only=True)
            except Exception as exc:  # URLError, hash mismatch (RuntimeError), OSError, ...
                raise DataError(
                    f"{key}.weights: cannot get torchvision's {arch} {chosen.name} from {chosen.url} "
                    f"({one_line(f'{exc.__class__.__name__}: {exc}', limit=160)}); download that file elsewhere and "
                    f"give it as {key}.state_dict instead (with mean: {defaults['mean']}, std: {defaults['std']}, "
                    f"input_size: {defaults['input_size']})"
                ) from exc
    try:
        net = _get_model(arch, num_classes, kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}.kwargs: torchvision's {arch} does not take {kwargs} ({one_line(str(exc))})") from exc
    if state_dict is not None:
        fit_state_dict(f"{key}.weights: {weights}", f"torchvision:{arch}", net, state_dict, num_classes)
        net.load_state_dict(state_dict)
    return net, defaults


def expected_image_sizes(models: Sequence[str], sources: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{model: (crop size, resize size)}`` of the models whose input size is known without building them.

    An explicit ``input_size`` (resize size: ``round(input_size / 0.875)``), or the
    evaluation transforms torchvision publishes with a named ``weights`` (e.g.
    ResNet-50 ``IMAGENET1K_V2``: resize 232, crop 224). Nothing is downloaded.
    """
    sizes: dict[str, tuple[int, int]] = {}
    for name in models:
        source = sources.get(name)
        if not source:
            continue
        if source.get("input_size"):
            size = int(source["input_size"])
            sizes[name] = (size, round(size / 0.875))
        elif source.get("torchvision") and source.get("weights"):
            import torchvision

            try:
                transforms = torchvision.models.get_model_weights(source["torchvision"])[source["weights"]].transforms()
            except (KeyError, ValueError):
                continue  # the train stage names the bad name in one line
            sizes[name] = (int(transforms.crop_size[0]), int(transforms.resize_size[0]))
    return sizes


def _get_model(arch: str, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    """``torchvision.models.get_model`` without weights; a builder that cannot run on the meta device (RegNet's
    computes with its tensors) builds on the CPU instead."""
    import torchvision

    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except NotImplementedError:
        if torch.get_default_device().type != "meta":
            raise
        with torch.device("cpu"):
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)


# ---------------------------------------------------------------------------
# state_dict files


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """A state_dict from ``file`` (``torch.load(weights_only=True)``): bare, or under ``"state_dict"`` / ``"model"``.

    An onepixel checkpoint of a :class:`SourceModel` gives its network's weights (``net.*``);
    keys that all start with ``module.`` (``DataParallel``) lose that prefix.
    """
    obj = _torch_load(file, "cpu")
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for wrapper in ("state_dict", "model"):
            if _is_state_dict(obj.get(wrapper)):
                obj = obj[wrapper]
                break
    if not _is_state_dict(obj):
        kind = f"dict with keys {sorted(map(str, obj))[:SHOWN_KEYS]}" if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{file}: not a state_dict of tensors (bare or under 'state_dict' / 'model'); got a {kind}")
    state = dict(obj)
    if any(k.startswith("net.") for k in state) and all(
        k.startswith(("net.", "normalize.", "program.")) for k in state
    ):
        state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def fit_state_dict(
    label: str, arch: str, net: nn.Module, state_dict: Mapping[str, torch.Tensor], num_classes: int
) -> None:
    """Refuse, in one line, a state_dict that does not fit ``net``: another class count, or other keys and shapes."""
    expected = net.state_dict()
    wrong = [k for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    others = [k for k in state_dict if k not in expected] + [k for k in expected if k not in state_dict]
    classifier = [
        k
        for k in wrong
        if expected[k].dim() >= 1
        and expected[k].shape[0] == num_classes
        and tuple(state_dict[k].shape[1:]) == tuple(expected[k].shape[1:])
    ]
    if wrong and not others and classifier == wrong:
        classes = int(state_dict[wrong[0]].shape[0])
        raise DataError(
            f"{label}: its {arch} has {classes} classes ({', '.join(wrong[:2])}), the dataset has {num_classes}"
        )
    problems = _fit_problems(net, dict(state_dict))
    if problems:
        raise DataError(f"{label}: is not a state_dict of {arch}; " + "; ".join(problems))


# ---------------------------------------------------------------------------
# Factories


def call_factory(spec: str, kwargs: Mapping[str, Any], label: str) -> nn.Module:
    """``package.module:function(**kwargs)``: the user's network (this runs their code).

    Raises:
        ConfigError: a malformed spec, an import or call that fails, or a result that is not an ``nn.Module``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{label}: {spec!r} must be 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error of the module's own code
        raise ConfigError(
            f"{label}: cannot import {module_name} ({one_line(f'{exc.__class__.__name__}: {exc}', 200)}); "
            "is it on PYTHONPATH?"
        ) from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"{label}: {module_name} has no function {attr!r}")
    try:
        net = function(**dict(kwargs))
    except Exception as exc:
        raise ConfigError(
            f"{label}: {spec}(**{dict(kwargs)}) failed ({one_line(f'{exc.__class__.__name__}: {exc}', 200)})"
        ) from exc
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{label}: {spec} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


# ---------------------------------------------------------------------------
# Checks on the built model


def check_logits(key: str, model: SourceModel, num_classes: int) -> None:
    """One zero image of the dataset's size must give ``(1, num_classes)`` logits, else one line."""
    shape = (1, model.in_channels, model.image_size, model.image_size)
    x = torch.zeros(shape, dtype=model_dtype(model), device=model_device(model))
    try:
        with eval_mode(model), torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise ConfigError(
            f"{key}: {model.arch} does not run on {shape[1]}x{shape[2]}x{shape[3]} images resized to "
            f"{model.input_size} ({one_line(f'{exc.__class__.__name__}: {exc}', 200)}); set {key}.input_size "
            "to the side it takes"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{key}: {model.arch} returns {got}, not logits (N, num_classes)")
    if out.shape[1] != num_classes:
        raise ConfigError(f"{key}: {model.arch} has {out.shape[1]} classes, the dataset has {num_classes}")


# ---------------------------------------------------------------------------
# Rebuilding from a checkpoint


def rebuild_source_model(
    file: Path,
    arch: str,
    build_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    allow_code: bool = False,
) -> SourceModel:
    """The :class:`SourceModel` a checkpoint holds (``arch`` ``kind:...``), its state_dict loaded.

    - ``torchvision:NAME``: built by torchvision from the name and ``build_kwargs`` (on the
      meta device, then the weights are assigned: no user code, no weight initialisation).
    - ``program:FILE``: from the archive's bytes in ``state_dict["program._extra_state"]``,
      checked and loaded as :func:`load_program` does (no pickled code runs).
    - ``factory:pkg.mod:fn``: runs ``fn(**kwargs)``, only with ``allow_code=True``.

    Raises:
        DataError: one line naming ``file``: an unknown kind, refused code, a state_dict that does not fit.
    """
    kind, _, spec = arch.partition(":")
    kwargs = dict(build_kwargs)
    try:
        num_classes = int(kwargs["num_classes"])
        common: dict[str, Any] = {
            "arch": arch,
            "in_channels": int(kwargs["in_channels"]),
            "image_size": int(kwargs["image_size"]),
            "input_size": int(kwargs.get("input_size") or 0),
            "mean": kwargs.get("mean"),
            "std": kwargs.get("std"),
            "layers": list(kwargs.get("layers") or []),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{file}: its {arch!r} model lacks build_kwargs {exc} (num_classes, in_channels, image_size)"
        ) from exc
    extra = {k: v for k, v in kwargs.items() if k not in common}
    program = None
    if kind == "torchvision":
        import torchvision

        if spec not in torchvision.models.list_models(module=torchvision.models):
            raise DataError(f"{file}: its model {arch!r} is not a torchvision classification model of this torchvision")
        options = dict(kwargs.get("kwargs") or {})
        try:
            with torch.device("meta"):  # no weight initialisation: the state_dict gives them
                net = _get_model(spec, num_classes, options)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{file}: cannot build its {arch} with {options} ({one_line(str(exc))})") from exc
    elif kind == "program":
        stored = state_dict.get("program._extra_state")
        if not isinstance(stored, torch.Tensor) or stored.dtype != torch.uint8:
            raise DataError(f"{file}: its {arch} model lacks the program's bytes (program._extra_state)")
        program = stored.cpu().numpy().tobytes()
        net, _ = load_program(program, f"{file} (its {arch})", common["in_channels"])
    elif kind == "factory":
        if not allow_code:
            raise DataError(
                f"{file}: its model is built by user code ({spec}); load it with load_checkpoint(..., allow_code=True) "
                "only if you trust that code (in a study: model_sources.<name>.run_code: true)"
            )
        try:
            net = call_factory(spec, dict(kwargs.get("kwargs") or {}), f"{file} (its {arch})")
        except ConfigError as exc:
            raise DataError(str(exc)) from exc
    else:
        raise DataError(f"{file}: unknown model kind {kind!r} in arch {arch!r}; allowed: {', '.join(SOURCE_KINDS)}")
    model = SourceModel(net, build_kwargs=extra | {"num_classes": num_classes}, program=program, **common)
    problems = _fit_problems(model, dict(state_dict))
    if problems:
        raise DataError(f"{file}: state_dict does not fit its {arch!r} model; " + "; ".join(problems))
    model.load_state_dict(dict(state_dict), assign=_on_meta(model))
    if _on_meta(model):  # a tensor the state_dict does not hold (a non-persistent buffer): build for real
        with _seeded(0):
            real = _get_model(spec, num_classes, options)
        model = SourceModel(real, build_kwargs=extra | {"num_classes": num_classes}, **common)
        model.load_state_dict(dict(state_dict))
    return model


__all__ = [
    "SOURCE_KINDS",
    "SourceModel",
    "build_source_model",
    "call_factory",
    "check_program",
    "default_feature_layers",
    "export_load",
    "fit_state_dict",
    "load_program",
    "program_input",
    "read_state_dict",
    "rebuild_source_model",
]
