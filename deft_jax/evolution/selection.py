"""Which evaluated mask a search returns (`search.select`), among the masks scored with the
whole fitness budget:

- "best": the best fitness (earliest evaluated on ties);
- "smallest-within-1se": the fewest trainable parameters among masks whose fitness is within
  one standard error of the best's (toward smaller masks);
- "full-unless-1se-better": the opposite: the full mask (every group trained: the simple
  recipe, evaluated by the same fitness, e.g. with `seed_baselines`) unless the best mask
  beats it by more than one standard error; the best where the full mask was not scored
  with the whole budget.

SE = sqrt(e (1 - e) / n_val) for the best validation error e (binomial); with `metric` "nll",
SE = L / sqrt(n_val) for the best mean log-loss L (item log-losses taken as exponentially
distributed: their standard deviation is their mean).
"""

from __future__ import annotations

import math

from deft_jax.core.masks import mask_from_key
from deft_jax.evolution.fitness import MemoTable
from deft_jax.models.groups import LayerGroups


def standard_error(best: float, n_val: int, metric: str) -> float:
    """One standard error of the best fitness (1 - metric), as the module says."""
    if metric == "nll":
        return max(best - 1.0, 0.0) / math.sqrt(max(n_val, 1))
    e = min(max(best, 0.0), 1.0)
    return math.sqrt(e * (1.0 - e) / max(n_val, 1))


def select_mask(memo: MemoTable, groups: LayerGroups, rule: str, n_val: int,
                metric: str = "accuracy", full_key: str | None = None) -> tuple[str, dict]:
    """(mask key, how it was chosen) by `rule` (see the module); `full_key`: the full mask's key."""
    full = memo.full_budget()
    best_key = min(full, key=lambda k: full[k])  # dicts keep evaluation order: earliest on ties
    best = full[best_key]
    if rule == "best":
        return best_key, {"rule": "best", "best_fitness": best}
    se = standard_error(best, n_val, metric)
    if rule == "full-unless-1se-better":
        if full_key not in full:
            return best_key, {"rule": rule, "best_fitness": best, "full_fitness": None,
                              "note": "the full mask was not scored with the whole budget: the best kept"}
        beats = full[best_key] < full[full_key] - se - 1e-12
        chosen = best_key if beats else full_key
        return chosen, {"rule": rule, "best_fitness": best, "best_mask": best_key, "standard_error": se,
                        "full_fitness": full[full_key], "best_beats_full": bool(beats)}
    within = [k for k in full if full[k] <= best + se + 1e-12]
    names = groups.names
    chosen = min(within, key=lambda k: (groups.fraction(mask_from_key(k, names)), full[k]))
    return chosen, {"rule": rule, "best_fitness": best, "best_mask": best_key, "standard_error": se,
                    "candidates_within": len(within),
                    "trainable_fraction": groups.fraction(mask_from_key(chosen, names)),
                    "best_trainable_fraction": groups.fraction(mask_from_key(best_key, names))}
