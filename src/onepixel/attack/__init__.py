"""One-pixel attack by differential evolution (Su, Vargas & Sakurai, arXiv 1710.08864): the engine and its files.

* :class:`OnePixelAttack`: the vectorised, continuously batched DE engine
  (:mod:`onepixel.attack.de`, its random streams in :mod:`onepixel.attack.rng`);
* :class:`AttackResult`: the per-image outcome;
* :class:`ExhaustiveAttack`: every position x a colour set (:mod:`onepixel.attack.exhaustive`), the
  ground truth for DE; :class:`SweepResult`: its AttackResult plus counts and maps;
* :class:`FGSM`, :class:`PGD`: L-inf gradient attacks (:mod:`onepixel.attack.gradient`) with results in the
  same format, for comparing their propagation maps with one-pixel ones;
* :func:`result_to_dataset`, :func:`save_attack`, :func:`load_attack`,
  :func:`merge_attacks`: its netCDF files.

The workflow's stages (select the images, attack a shard, merge the shards) are in
:mod:`onepixel.attack.stage`.
"""

from onepixel.attack.de import STRATEGIES, AttackResult, OnePixelAttack
from onepixel.attack.exhaustive import ExhaustiveAttack, SweepResult
from onepixel.attack.gradient import FGSM, PGD, perturbation_sizes
from onepixel.attack.results import load_attack, merge_attacks, result_to_dataset, save_attack

__all__ = [
    "FGSM",
    "PGD",
    "STRATEGIES",
    "AttackResult",
    "ExhaustiveAttack",
    "OnePixelAttack",
    "SweepResult",
    "load_attack",
    "merge_attacks",
    "perturbation_sizes",
    "result_to_dataset",
    "save_attack",
]
