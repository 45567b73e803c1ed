"""What a run's search did, for report.md and report.html alike: which kind of search ran,
one line saying so, and, for a screen, its candidates.

- "none": no search (`final.member_masks = "full"`, the default recipe): every member of the
  final model fine-tunes every layer group; there is no fitness.
- "screen": the initial population only (`search.generations = 0`, the declared DEFT): every
  candidate is scored once, those of `search.fidelity = "halving"` first with the short
  budget, and the finalists with the whole one. The report lists every candidate.
- "de": differential evolution over generations (the paper's DEFT); the report draws the
  fitness per generation.

Every score is shown as the val quantity in its own sign (`core.metrics.quantity_of`): a
log-loss is positive and lower is better, an accuracy higher.
"""

from __future__ import annotations

import dataclasses

from deft_jax.core.divergence import worst_fitness
from deft_jax.core.masks import lr_multiplier, mask_from_key, trains
from deft_jax.core.metrics import fitness_formula, lower_is_better, quantity_name, quantity_of


def search_kind(cfg: dict, best_fitness: float | None) -> str:
    """"none", "screen" or "de" (see the module)."""
    if best_fitness is None:
        return "none"
    return "screen" if cfg["search"].get("generations", 1) == 0 else "de"


def whole_budget_epochs(cfg: dict) -> int:
    """The epochs behind a whole-budget fitness: the short fine-tune's, or with
    `search.schedule = "final"` the final training's (`evaluators.recipe.fitness_recipe`)."""
    return cfg["final"]["epochs"] if cfg["search"].get("schedule") == "final" else cfg["finetune"]["epochs"]


def direction(metric: str) -> str:
    return "lower is better" if lower_is_better(metric) else "higher is better"


def search_line(cfg: dict, kind: str, n_candidates: int, n_finalists: int) -> str:
    """One plain-text line: what the search was."""
    s, metric = cfg["search"], cfg["search"]["metric"]
    rule = f"{fitness_formula(metric)}, lower is better"
    if kind == "none":
        final = cfg.get("final", {})
        return (f"none: each of the final model's {final.get('ensemble', 1)} member(s) fine-tunes every "
                "layer group (final.member_masks = full), so there is no fitness")
    if kind == "screen":
        budget = (f"first {cfg['finetune']['epochs']} epoch(s) each, then {n_finalists} finalists (the best "
                  f"of the screen, and any mask that skips it) the whole budget of {whole_budget_epochs(cfg)} epochs"
                  if s.get("fidelity") == "halving" else f"{whole_budget_epochs(cfg)} epoch(s) each")
        return (f"a screen of {n_candidates} candidate masks, no generations (search.generations = 0): "
                f"{budget}; ranked by val {quantity_name(metric)} ({rule})")
    return (f"differential evolution, population {s['population_size']}, {s['generations']} generations "
            f"after the initial one, F={s.get('differential_weight')}, CR={s.get('crossover_rate')}, "
            f"elitism={s.get('elitism')}; {rule}")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One mask the screen scored: its fine-tuned groups, its short-budget and whole-budget
    val quantity (None where it had none) and its part in the outcome."""

    groups: str
    screen: float | None
    whole: float | None
    role: str


def describe_mask(mask: dict) -> str:
    """The groups a mask trains, with any learning-rate multiplier: 'conv3 (x0.1 lr), head'."""
    return ", ".join(g if lr_multiplier(v) == 1.0 else f"{g} (x{lr_multiplier(v):.3g} lr)"
                     for g, v in mask.items() if trains(v))


def describe_groups(mask: dict) -> str:
    """`describe_mask`, but 'every group (full fine-tune)' for the full mask and 'none' for none."""
    if all(trains(v) and lr_multiplier(v) == 1.0 for v in mask.values()):
        return "every group (full fine-tune)"
    return describe_mask(mask) or "none"


def candidates(history: list[dict], memo: dict[str, float], memo_short: dict[str, int],
               group_names: list[str], metric: str, selected_key: str | None) -> list[Candidate]:
    """Every mask of the memo in evaluation order, with the val quantity of its short run
    (from the history's `short_fitness`) and of its whole-budget run."""
    short: dict[str, float] = {}
    for row in history:
        short.update(row.get("short_fitness") or {})
    out = []
    for key, fitness in memo.items():
        whole = None if key in memo_short else quantity_of(metric, fitness)
        screened = short.get(key, fitness if key in memo_short else None)
        role = ("selected" if key == selected_key else "finalist" if whole is not None else "screened out")
        if metric == "nll" and fitness >= worst_fitness(metric):
            role += " (diverged: its score is the cap)"
        out.append(Candidate(describe_groups(mask_from_key(key, group_names)),
                             None if screened is None else quantity_of(metric, screened), whole, role))
    return out
