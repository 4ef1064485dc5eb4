"""One-pixel attack by differential evolution (Su, Vargas & Sakurai, arXiv 1710.08864).

* :class:`OnePixelAttack` — the vectorised, continuously batched DE engine.
* :class:`AttackResult` — per-image outcome; :func:`result_to_dataset`,
  :func:`save_attack`, :func:`load_attack`, :func:`merge_attacks` — netCDF I/O.
* :func:`run_attack_stage` — the workflow stage (select images, attack, write);
  for scale :func:`run_select_stage`, :func:`run_attack_stage` per shard
  (:func:`shard_indices`) and :func:`run_merge_stage`.
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
    read_selection,
    run_attack_stage,
    run_merge_stage,
    run_select_stage,
    select_correct_images,
    shard_indices,
    stored_config,
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
    "read_selection",
    "result_to_dataset",
    "run_attack_stage",
    "run_merge_stage",
    "run_select_stage",
    "save_attack",
    "select_correct_images",
    "shard_indices",
    "stored_config",
    "targets_for",
]
