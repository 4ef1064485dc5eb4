"""One-pixel attack by differential evolution (Su, Vargas & Sakurai, arXiv 1710.08864): the engine and its files.

* :class:`OnePixelAttack`: the vectorised, continuously batched DE engine
  (:mod:`onepixel.attack.de`, its random streams in :mod:`onepixel.attack.rng`);
* :class:`AttackResult`: the per-image outcome;
* :func:`result_to_dataset`, :func:`save_attack`, :func:`load_attack`,
  :func:`merge_attacks`: its netCDF files.

The workflow's stages (select the images, attack a shard, merge the shards) are in
:mod:`onepixel.attack.stage`.
"""

from __future__ import annotations

from typing import Any

from onepixel.attack.de import STRATEGIES, AttackResult, OnePixelAttack
from onepixel.attack.results import load_attack, merge_attacks, result_to_dataset, save_attack

__all__ = [
    "STRATEGIES",
    "AttackResult",
    "OnePixelAttack",
    "load_attack",
    "merge_attacks",
    "result_to_dataset",
    "save_attack",
]


def __getattr__(name: str) -> Any:
    """Transitional: other names (``attack_config``, the stage functions) still resolve here, from
    :mod:`onepixel.attack.results` or :mod:`onepixel.attack.stage`; import them from there."""
    import importlib

    for module in ("onepixel.attack.results", "onepixel.attack.stage"):
        found = importlib.import_module(module)
        if not name.startswith("__") and hasattr(found, name):
            return getattr(found, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
