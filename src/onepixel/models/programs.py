"""torch.export programs (.pt2) checked before loading: no pickled code, no native code, no code in names or shape expressions."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import pickletools
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from onepixel.errors import DataError
from onepixel.files import one_line

#: names sympy may meet in a shape expression of an exported graph (torch's sympy functions among them)
_SYMPY_WORDS = (
    "Symbol Integer Rational Float Max Min Abs Eq Ne Ge Gt Le Lt And Or Not True False true false oo zoo nan "
    "floor ceiling Mod Piecewise ITE Pow Mul Add sqrt S positive integer real nonnegative negative finite "
    "FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural "
    "FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt "
    "RoundDecimal ToFloat Identity"
)
_SYMPY_NAMES = frozenset(_SYMPY_WORDS.split())
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)|(?P<str>'[A-Za-z_]\w*')"
    r"|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%()<>,=&|~^]))"
)
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
#: keys of an exported program's JSON whose values become names in the code ``module()`` generates
_NAME_KEYS = frozenset(
    {"name", "as_name", "target", "parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn"}
)
_PLAIN_NAME = re.compile(r"[\w.]*")


def check_program(data: bytes, label: str) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` could not load without running code from it.

    Checked: it is an intact zip of ``torch.export.save`` (``archive_format`` ``pt2``, CRCs);
    every pickle in it (weights and constants stored pickled, sample inputs, any nested
    ``torch.save`` archive or ``.pkl``) loads with ``torch.load(weights_only=True)`` or,
    for a bare pickle, names only the globals ``weights_only`` allows; no compiled code
    (AOTInductor ``.so``); its graph's shape expressions (which sympy evaluates) use only
    numbers, symbols and sympy's functions; names (weights, nodes, arguments) are plain
    dotted identifiers, since ``module()`` writes them into Python code.

    Raises:
        DataError: one line naming ``label`` and what was refused.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        damaged = archive.testzip()
        names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, zlib.error) as exc:
        raise DataError(
            f"{label}: not a torch.export .pt2 archive (not a readable zip file: corrupt or truncated? {one_line(str(exc), 120)})"
        ) from exc
    if damaged is not None:
        raise DataError(f"{label}: corrupt .pt2 archive ({damaged} fails its CRC check: truncated or damaged?)")
    prefixes = {name.split("/", 1)[0] for name in names}
    if len(prefixes) != 1 or len(set(names)) != len(names) or any("/" not in name for name in names):
        raise DataError(f"{label}: not a torch.export .pt2 archive (its entries are not one folder of unique names)")
    entries = {name.split("/", 1)[1]: name for name in names}
    if "archive_format" not in entries or archive.read(entries["archive_format"]).strip() != b"pt2":
        raise DataError(
            f"{label}: not a torch.export .pt2 archive (no archive_format pt2: save it with torch.export.save)"
        )
    if "models/model.json" not in entries:
        raise DataError(f"{label}: holds no exported program (models/model.json); save one with torch.export.save")
    raw = _raw_payloads(archive, entries, label)
    for rel, name in entries.items():
        if rel.startswith("data/aotinductor/") or rel.endswith((".so", ".dll", ".dylib", ".cpp")):
            raise DataError(
                f"{label}: refused, it holds compiled code ({rel}), which loading would run; save the "
                "exported program alone (torch.export.save)"
            )
        if rel in raw:
            continue
        payload = archive.read(name)
        if payload[:4] == b"PK\x03\x04":
            _check_torch_save(payload, label, rel)
        elif rel.endswith(".json"):
            tree = _json(payload, label, rel)
            if rel.startswith("models/"):
                _check_graph_json(tree, label, rel)
        elif payload[:1] == b"\x80" or rel.endswith(".pkl"):
            _check_pickle(payload, label, rel)


def _json(payload: bytes, label: str, rel: str) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{label}: corrupt .pt2 archive ({rel} is not valid JSON: {one_line(str(exc), 120)})") from exc


def _raw_payloads(archive: zipfile.ZipFile, entries: dict[str, str], label: str) -> set[str]:
    """Entries the payload configs declare raw tensor bytes only (never unpickled); checks the names they give."""
    raw: set[str] = set()
    pickled: set[str] = set()
    for rel, name in entries.items():
        if not (rel.startswith(("data/weights/", "data/constants/")) and rel.endswith("_config.json")):
            continue
        folder = rel.rsplit("/", 1)[0] + "/"
        config = _json(archive.read(name), label, rel)
        config = config.get("config") if isinstance(config, dict) else None
        if not isinstance(config, dict):
            raise DataError(f"{label}: corrupt .pt2 archive ({rel} has no config mapping)")
        for fqn, meta in config.items():
            _check_name(fqn, label, rel)
            path = meta.get("path_name") if isinstance(meta, dict) else None
            if isinstance(path, str):
                _check_name(path, label, rel)
                (raw if meta.get("use_pickle") is False else pickled).add(folder + path)
    return raw - pickled


def _check_torch_save(payload: bytes, label: str, rel: str) -> None:
    try:
        torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it would call {refused.group(1)}" if refused else "it is not plain tensors"
        raise DataError(
            f"{label}: refused, its {rel} is a pickle that weights_only loading refuses ({what}: loading it would "
            "run arbitrary code); export a model whose weights are plain tensors"
        ) from exc
    except Exception as exc:
        raise DataError(
            f"{label}: corrupt .pt2 archive ({rel} is not a readable torch.save payload: "
            f"{one_line(f'{exc.__class__.__name__}: {exc}', 120)})"
        ) from exc


def _allowed_globals() -> set[str]:
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch without that private helper: only the tensor basics
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}


def pickle_globals(payload: bytes) -> list[str]:
    """The globals a pickle imports (GLOBAL, INST, STACK_GLOBAL), found without unpickling it.

    The pickle machine's stack is followed opcode by opcode (strings, marks, memo), so a
    ``STACK_GLOBAL`` names the two strings it really takes; where they are not strings
    (computed) it is reported as ``"<computed>"``. Raises ValueError if ``payload`` is not a pickle.
    """
    mark = object()
    found: list[str] = []
    stack: list[object] = []  # a str for a string, ``mark`` for a mark, None for anything else
    memo: dict[int, object] = {}

    def pop() -> object:
        if not stack:
            raise ValueError("stack underflow")
        return stack.pop()

    for opcode, arg, _pos in pickletools.genops(payload):
        name = opcode.name
        if name == "STACK_GLOBAL":
            attr, module = pop(), pop()
            found.append(f"{module}.{attr}" if isinstance(module, str) and isinstance(attr, str) else "<computed>")
            stack.append(None)
            continue
        if name in ("GLOBAL", "INST"):
            found.append(str(arg).replace(" ", "."))
        if name.endswith(("UNICODE", "UNICODE8", "STRING")) and isinstance(arg, str):
            stack.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and isinstance(arg, int):
            memo[arg] = stack[-1] if stack else None
        elif name in ("GET", "BINGET", "LONG_BINGET") and isinstance(arg, int):
            stack.append(memo.get(arg))
        elif name == "DUP":
            stack.append(stack[-1] if stack else None)
        else:
            before = opcode.stack_before
            if pickletools.markobject in before:
                while pop() is not mark:
                    pass
                for _ in range(before.index(pickletools.markobject)):
                    pop()
            else:
                for _ in before:
                    pop()
            stack.extend(mark if item is pickletools.markobject else None for item in opcode.stack_after)
    return found


def _check_pickle(payload: bytes, label: str, rel: str) -> None:
    try:
        found = pickle_globals(payload)
    except Exception as exc:  # pickletools raises ValueError and others on garbage
        raise DataError(
            f"{label}: corrupt .pt2 archive ({rel} is not a readable pickle: {one_line(str(exc), 120)})"
        ) from exc
    allowed = _allowed_globals()
    refused = [name for name in found if name not in allowed]
    if refused:
        raise DataError(
            f"{label}: refused, its {rel} is a pickle that imports {refused[0]} (loading it would run arbitrary "
            "code); only tensors are allowed"
        )


def _check_name(value: str, label: str, rel: str) -> None:
    if not _PLAIN_NAME.fullmatch(value):
        raise DataError(f"{label}: refused, {rel} names {value[:60]!r}, not a plain dotted name (it would become code)")


def _check_expression(text: str, label: str, rel: str) -> None:
    """A shape expression may hold numbers, symbols (``s0``), quoted symbol names and sympy's functions only."""
    pos = 0
    while pos < len(text.rstrip()):
        match = _EXPR_TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise DataError(
                f"{label}: refused, {rel} has a shape expression {text[:60]!r} that is not plain arithmetic"
            )
        word = match.group("name")
        if word is not None and word not in _SYMPY_NAMES and not _SYMBOL.fullmatch(word):
            raise DataError(
                f"{label}: refused, {rel} has a shape expression with {word!r} ({text[:60]!r}), which sympy would "
                "evaluate as Python"
            )
        pos = match.end()


def _check_graph_json(tree: Any, label: str, rel: str) -> None:
    stack: list[tuple[str | None, Any]] = [(None, tree)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            if key == "range_constraints":
                for symbol in value:
                    _check_name(str(symbol), label, rel)
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((key, item) for item in value)
        elif isinstance(value, str):
            if key == "expr_str":
                _check_expression(value, label, rel)
            elif key in _NAME_KEYS or key == "forward_arg_names":
                _check_name(value, label, rel)


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` in the block uses ``weights_only=True``, even one that asks for ``False``."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def export_load(data: bytes, label: str) -> Any:
    """``torch.export.load`` of a ``.pt2`` archive's bytes, checked by :func:`check_program` first.

    Loaded with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` besides, so no ``torch.load`` inside unpickles code.

    Raises:
        DataError: a refused or unreadable archive.
    """
    check_program(data, label)
    with _weights_only_loads():
        try:
            return torch.export.load(io.BytesIO(data))
        except Exception as exc:
            raise DataError(
                f"{label}: torch.export.load failed ({one_line(f'{exc.__class__.__name__}: {exc}', 200)})"
            ) from exc


def program_input(program: Any, label: str) -> tuple[Any, Any, Any, Any]:
    """``(batch, channels, height, width)`` of an exported program's one input: ints where static, else symbols.

    Raises:
        DataError: the program does not take one 4-D tensor.
    """
    inputs = list(program.graph_signature.user_inputs)
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    value = placeholders[inputs[0]].meta.get("val") if len(inputs) == 1 and inputs[0] in placeholders else None
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        raise DataError(f"{label}: the program must take one image batch (N, C, H, W); it takes {len(inputs)} input(s)")
    batch, channels, height, width = value.shape
    return batch, channels, height, width


def load_program(data: bytes, label: str, in_channels: int) -> tuple[nn.Module, int]:
    """The network of a ``.pt2`` archive's bytes (:func:`export_load`) and its input side.

    The network is ``torch.export.load(...).module()``: it computes what was exported (a
    BatchNorm or dropout stays in the mode it was exported in; export in eval mode), and
    its ``train()``/``eval()`` only set flags. Its input must have a dynamic batch
    dimension; the side is its static height (= width), or 0 where it is dynamic.

    Raises:
        DataError: a refused or unreadable archive, or an input that is not ``(batch, in_channels, H, W)``.
    """
    program = export_load(data, label)
    batch, channels, height, width = program_input(program, label)
    if isinstance(batch, int):
        raise DataError(
            f"{label}: exported for batches of exactly {batch} image(s); export it with a dynamic batch: "
            "torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},)) with x of 2 or more images"
        )
    if isinstance(channels, int) and channels != in_channels:
        raise DataError(f"{label}: takes {channels}-channel images; the dataset has {in_channels} channel(s)")
    if isinstance(height, int) != isinstance(width, int) or (isinstance(height, int) and height != width):
        raise DataError(f"{label}: takes {height}x{width} images; only square inputs (or dynamic sizes) are supported")
    net = program.module()
    for method in ("train", "eval"):  # module() makes them raise: with the class's own, they set flags only
        net.__dict__.pop(method, None)
    return net, int(height) if isinstance(height, int) else 0
