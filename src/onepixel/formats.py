"""The format of every netCDF and JSON file onepixel writes, ``onepixel-<kind>/<version>``, and its strict check.

Every writer stamps its file with :func:`format_name` (netCDF: the global
attribute ``format``; JSON: the top-level key ``"format"``) and every reader
calls :func:`check_format`: a file of another kind, of another version, or
without a format is refused with a one-line :class:`~onepixel.errors.DataError`.
There are no fallbacks for older layouts: when a kind's layout changes, its
version goes up and the files are made again.
"""

from __future__ import annotations

import os
import re

from onepixel.errors import DataError

#: The name of the netCDF global attribute and of the JSON key that holds the format.
FORMAT_KEY = "format"

#: The version of each kind of file that this onepixel writes and reads.
FORMAT_VERSION: dict[str, int] = {
    "dataset": 1,
    "metrics": 2,
    "selection": 2,
    "attack": 2,
    "cube": 2,
    "layers": 2,
    "propagation": 2,
    "locality": 2,
    "vulnerability": 2,
    "summary": 2,
    "comparison": 2,
}

#: The file of each kind, as the workflow names it (for documentation and messages).
FILES: dict[str, str] = {
    "dataset": "results/{study}/data/{train,test}.nc",
    "metrics": "results/{study}/metrics/{model}.json",
    "selection": "results/{study}/attack/{model}/selection.json",
    "attack": "results/{study}/attack/{model}.nc and its shards attack/{model}/shard_{i}-of-{n}.nc",
    "cube": "results/{study}/cubes/{model}/{NN}_{layer}.nc",
    "layers": "results/{study}/cubes/{model}/layers.json",
    "propagation": "results/{study}/propagation/{model}.nc",
    "locality": "results/{study}/locality/{model}.nc",
    "vulnerability": "results/{study}/vulnerability/{model}.nc",
    "summary": "results/{study}/provenance.json (of the numbers in summary.json)",
    "comparison": "results/{study}/plots/comparison.json (the study's attacks side by side)",
}

#: What each kind records about the files it was made from (netCDF: global attributes; JSON: top-level keys),
#: see :mod:`onepixel.lineage`: ``model_sha256`` (the checkpoint's sha256), ``test_digest`` (the test set's
#: content), ``selection_digest`` (the selected images) and ``attack_digest`` (the attack's rows). Every
#: reader that combines files refuses ones whose values differ.
LINEAGE: dict[str, tuple[str, ...]] = {
    "metrics": ("model_sha256", "test_digest"),
    "selection": ("model_sha256", "test_digest"),
    "attack": ("model_sha256", "test_digest", "selection_digest"),
    "cube": ("model_sha256", "test_digest", "attack_digest"),
    "layers": ("model_sha256", "test_digest", "attack_digest"),
    "propagation": ("model_sha256", "test_digest", "attack_digest"),
    "locality": ("model_sha256", "test_digest", "attack_digest"),
    "vulnerability": ("model_sha256", "test_digest", "attack_digest"),
}

_NAME = re.compile(r"onepixel-([a-z][a-z0-9_-]*)/([0-9]+)")


def format_name(kind: str) -> str:
    """``"onepixel-<kind>/<version>"``, the format this onepixel writes for ``kind``."""
    if kind not in FORMAT_VERSION:
        raise ValueError(f"unknown file kind {kind!r}; kinds: {', '.join(FORMAT_VERSION)}")
    return f"onepixel-{kind}/{FORMAT_VERSION[kind]}"


def check_format(found: object, kind: str, path: str | os.PathLike[str], field: str = "format attribute") -> None:
    """Check that ``found`` (the file's format, ``None`` when it has none) is the format of ``kind``.

    Args:
        found: the value of the file's ``format`` attribute or key.
        kind: the kind of file the reader expects (a key of :data:`FORMAT_VERSION`).
        path: the file, named in the error.
        field: what holds the format in this type of file, for the message.

    Raises:
        DataError: one line naming the file, what it is and what was expected.
    """
    expected = format_name(kind)
    if found == expected:
        return
    if found is None:
        raise DataError(
            f"{path}: has no onepixel {field} (not written by onepixel, or by a development "
            f"version before formats were recorded); expected {expected}"
        )
    match = _NAME.fullmatch(found) if isinstance(found, str) else None
    if match is None:
        raise DataError(f"{path}: has {field} {found!r}, which is not a onepixel format; expected {expected}")
    found_kind, version = match[1], int(match[2])
    if found_kind != kind:
        raise DataError(f"{path}: is a {found} file, expected {expected}")
    advice = (
        "written by a newer onepixel: upgrade onepixel, or re-run the stage that wrote it"
        if version > FORMAT_VERSION[kind]
        else "re-run the stage that wrote it"
    )
    raise DataError(f"{path}: is {found}, this onepixel reads {expected}; {advice}")
