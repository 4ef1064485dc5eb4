"""One-pixel attack by differential evolution (Su, Vargas & Sakurai, arXiv 1710.08864).

* :class:`OnePixelAttack` — the vectorised, continuously batched DE engine.
* :class:`AttackResult` — per-image outcome; :func:`result_to_dataset`,
  :func:`save_attack`, :func:`load_attack`, :func:`merge_attacks` — netCDF I/O.
* :func:`run_attack_stage` — the workflow stage (select images, attack, write).
"""

from onepixel.attack.de import STRATEGIES, AttackResult, OnePixelAttack
from onepixel.attack.results import (
    attack_config,
    load_attack,
    merge_attacks,
    result_to_dataset,
    save_attack,
)
from onepixel.attack.stage import (
    DEFAULT_ATTACK_CONFIG,
    attack_settings,
    make_attack,
    run_attack_stage,
    select_correct_images,
    targets_for,
)

__all__ = [
    "DEFAULT_ATTACK_CONFIG",
    "STRATEGIES",
    "AttackResult",
    "OnePixelAttack",
    "attack_config",
    "attack_settings",
    "load_attack",
    "make_attack",
    "merge_attacks",
    "result_to_dataset",
    "run_attack_stage",
    "save_attack",
    "select_correct_images",
    "targets_for",
]
