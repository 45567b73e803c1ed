"""Fitness of a layer-group mask: 1 - validation metric after a short fine-tune.

- `MemoTable`: identical masks are evaluated once per search (hits are counted).
- `PrefixFeatureCache`: with augmentation off, the activations entering the lowest
  trainable stage depend only on the pretrained weights and the data, so they are
  computed once per distinct prefix and the short fine-tune trains the suffix only.
- `evaluate_population`: memo table, feasibility and one evaluator call per population.
- `no_signal`: every fitness at chance level (or all equal): the search learned nothing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from deft_jax.core import training
from deft_jax.core.masks import GroupMask, mask_key
from deft_jax.data.inputs import SplitArrays
from deft_jax.models.base import ModelSpec
from deft_jax.models.groups import LayerGroups
from deft_jax.runtime.program_cache import ProgramCache


class MemoTable:
    """mask key -> fitness, shared by all evaluation modes; persisted with the search state.
    `epochs[key]`: the fine-tune epochs behind that fitness where it is a lower fidelity
    than the whole fitness recipe (`search.fidelity = "halving"`); absent = the whole."""

    def __init__(self, entries: Mapping[str, float] | None = None,
                 epochs: Mapping[str, int] | None = None):
        self.entries: dict[str, float] = dict(entries or {})
        self.epochs: dict[str, int] = dict(epochs or {})
        self.hits = 0

    def full_budget(self) -> dict[str, float]:
        """The entries scored with the whole fitness recipe."""
        return {k: v for k, v in self.entries.items() if k not in self.epochs}

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> float:
        self.hits += 1
        return self.entries[key]

    def put(self, key: str, fitness: float) -> None:
        self.entries[key] = float(fitness)


class PrefixFeatureCache:
    """Features entering stage k for train and val, per k, LRU-bounded in bytes.

    Computed by the per-stage inference programs of `training.logits` (kept in `forwards`,
    which evaluators share for their members' validation forwards), over train and val
    together in chunks of `chunk` rows, from the highest stage already cached below k: one
    program per stage for the whole search, whatever the starts."""

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays,
                 max_bytes: int = 2 << 30):
        self.spec, self.variables, self.data = spec, variables, data
        self.max_bytes = max_bytes
        self._store: OrderedDict[int, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()
        self.forwards = ProgramCache()
        n_train, n_val = len(data.x_train), len(data.x_val)
        # one chunk size for train, val and every member's validation: one shape per program
        self.chunk = max(1, min(256, max(n_val, 32), n_train + n_val))
        self.hits = self.misses = 0
        self.seconds_computing = 0.0
        self.seconds_saved = 0.0

    def features(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        if start == 0:
            return self.data.x_train, self.data.x_val
        if start in self._store:
            self._store.move_to_end(start)
            train, val, cost = self._store[start]
            self.hits += 1
            self.seconds_saved += cost
            return train, val
        self.misses += 1
        t0 = time.perf_counter()
        base = max((k for k in self._store if k < start), default=0)
        x_train, x_val = self._store[base][:2] if base else (self.data.x_train, self.data.x_val)
        both = training.logits(self.spec, self.variables, np.concatenate([x_train, x_val]), start=base,
                               stop=start, batch_size=self.chunk, cache=self.forwards)
        train, val = both[:len(x_train)], both[len(x_train):]
        cost = time.perf_counter() - t0
        self.seconds_computing += cost
        self._store[start] = (train, val, cost)
        while sum(t.nbytes + v.nbytes for t, v, _ in self._store.values()) > self.max_bytes \
                and len(self._store) > 1:
            self._store.popitem(last=False)
        return train, val

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"prefix_hits": self.hits, "prefix_misses": self.misses,
                "prefix_hit_rate": self.hits / total if total else 0.0,
                "prefix_seconds_saved": round(self.seconds_saved, 3)}


def infeasible_fitness(fraction: float, limit: float, worst: float = 1.0) -> float:
    """Masks training more than the allowed parameter fraction are never trained: their
    fitness is `worst` (the metric's worst fitness, `divergence.worst_fitness`) + the
    excess, worse than any real fitness and pointing back to feasibility."""
    return worst + (fraction - limit)


@dataclasses.dataclass(frozen=True)
class Halving:
    """Successive halving inside a generation: every new member trains `short_epochs` of the
    fitness schedule and the best `promote_fraction` of them (at least one) the whole
    schedule; every mask in `always` (the full mask the keep-full rule compares with) trains
    the whole schedule only, besides them."""

    short_epochs: int
    promote_fraction: float
    always: tuple[str, ...] = ()

    def promoted(self, n: int) -> int:
        return min(n, max(1, int(self.promote_fraction * n + 0.5)))  # rounded, at least one


def _evaluate(evaluator, keys: list[str], masks: list[GroupMask], epochs: int | None,
              journal) -> list[float]:
    """`evaluator.evaluate(masks[, epochs])`, through the `journal` (an `EvaluationJournal`)
    when there is one: members it has are not trained again, and every member the
    evaluator finishes is recorded as soon as it reports it (`on_member_scored`), so a kill
    loses at most the members in flight."""
    if journal is None:
        return list(evaluator.evaluate(masks) if epochs is None else evaluator.evaluate(masks, epochs=epochs))
    values: list[float | None] = [journal.get(k, epochs) for k in keys]
    todo = [i for i, v in enumerate(values) if v is None]
    restored = len(keys) - len(todo)
    journal.restored += restored
    if restored and getattr(evaluator, "on_member_done", None) is not None:
        evaluator.on_member_done(restored)  # progress counts them as done
    if not todo:
        return values
    hooked = hasattr(evaluator, "on_member_scored")
    if hooked:
        evaluator.on_member_scored = lambda j, value: journal.record(keys[todo[j]], epochs, value)
    try:
        sub = [masks[i] for i in todo]
        got = list(evaluator.evaluate(sub) if epochs is None else evaluator.evaluate(sub, epochs=epochs))
    finally:
        if hooked:
            evaluator.on_member_scored = None
    for i, value in zip(todo, got):
        values[i] = value
        if not hooked:  # an evaluator without the hook: recorded once its call returns
            journal.record(keys[i], epochs, value)
    return values


def evaluate_population(evaluator, masks: Sequence[GroupMask], memo: MemoTable,
                        groups: LayerGroups, max_fraction: float = 1.0,
                        halving: Halving | None = None, journal=None,
                        worst: float = 1.0) -> tuple[list[float], dict]:
    """Fitness per mask: memo hits and infeasible masks cost nothing; the distinct new
    feasible masks go to the evaluator in one call (one population program for vmap). With
    `halving`, they all get the short budget first and the most promising the whole one; a
    member left at the short budget keeps its short fitness (with keep = "best-val" never
    better than its whole-budget fitness would be: the short run is a prefix of the long).
    `journal`: finished members are persisted one by one and taken from it on a resume
    (`deft_jax.evolution.journal`); the result is the same as without it. `worst`: the
    metric's worst fitness, which infeasible masks exceed (`infeasible_fitness`)."""
    keys = [mask_key(m) for m in masks]
    fitness: dict[str, float] = {}
    hits = infeasible = 0
    todo: dict[str, GroupMask] = {}
    for key, mask in zip(keys, masks):
        if key in fitness or key in todo:
            hits += 1
            continue
        if key in memo:
            fitness[key] = memo.get(key)
            hits += 1
            continue
        fraction = groups.fraction(mask)
        if fraction > max_fraction + 1e-12:
            fitness[key] = infeasible_fitness(fraction, max_fraction, worst)
            infeasible += 1
            continue
        todo[key] = mask
    promoted = short_runs = 0
    short_fitness: dict[str, float] = {}
    if todo:
        new_keys, new_masks = list(todo), list(todo.values())
        def run(idx: list[int], epochs: int | None = None) -> list[float]:
            return _evaluate(evaluator, [new_keys[i] for i in idx], [new_masks[i] for i in idx],
                             epochs, journal)

        everyone = list(range(len(new_keys)))
        if halving is None:
            values = run(everyone)
        else:
            # a mask in `always` skips the short run (it gets the whole budget anyway); the
            # others run short, and the best promote_fraction of them go on
            values = [0.0] * len(new_keys)
            always = [i for i in everyone if new_keys[i] in halving.always]
            others = [i for i in everyone if i not in always]
            for i, value in zip(others, run(others, halving.short_epochs) if others else []):
                values[i] = value
            short_runs = len(others)
            short_fitness = {new_keys[i]: float(values[i]) for i in others}  # kept: promotion overwrites
            ranked = sorted(others, key=lambda i: (values[i], i))
            best = ranked[:halving.promoted(len(others))] if others else []
            best += always
            for i, value in zip(best, run(best)):
                values[i] = value
            # then every member whose short score already beats the best whole-budget score
            # (of earlier generations or just promoted): the incumbent is always scored
            # with the whole budget
            incumbent = min(list(memo.full_budget().values()) + [values[i] for i in best])
            more = [i for i in ranked if i not in best and values[i] < incumbent]
            if more:
                for i, value in zip(more, run(more)):
                    values[i] = value
                best += more
            promoted = len(best)
            for i, key in enumerate(new_keys):
                if i not in best:
                    memo.epochs[key] = halving.short_epochs
        for key, value in zip(new_keys, values):
            memo.put(key, value)
            fitness[key] = value
    return [fitness[k] for k in keys], {"evaluated": len(todo), "memo_hits": hits,
                                         "infeasible": infeasible, "promoted": promoted,
                                         "short_runs": short_runs, "short_fitness": short_fitness}


def no_signal(memo: MemoTable, num_classes: int, metric: str, n_val: int = 0) -> str | None:
    """Why the search's fitness carries no signal, or None: every mask trained with the whole
    budget scored at chance level (fitness 1 - 1/num_classes, the accuracy of guessing;
    macro-F1 is lower still) or worse, within two binomial standard errors of a guess on
    `n_val` validation images (0.02 if unknown), or all (three or more) scored exactly the
    same: the search could not tell masks apart and its choice says nothing. With metric
    "nll" chance level is the log-loss of guessing uniformly, ln(num_classes) (within 1%)."""
    values = list(memo.full_budget().values())
    if not values:
        return None
    if metric == "nll" and num_classes >= 2 and min(values) - 1 >= 0.99 * math.log(num_classes):
        return (f"every mask scored at chance level (best fitness {min(values):.4f}: val log-loss "
                f"{min(values) - 1:.4f}, guessing one of {num_classes} classes gives {math.log(num_classes):.4f})")
    if metric == "nll":
        return (f"every mask scored the same fitness ({values[0]:.4f})"
                if len(values) >= 3 and max(values) == min(values) else None)
    p = 1.0 / max(num_classes, 2)
    tolerance = 2 * math.sqrt(p * (1 - p) / n_val) if n_val > 0 else 0.02
    if num_classes >= 2 and min(values) >= 1 - p - tolerance:
        return (f"every mask scored at chance level (best fitness {min(values):.4f}: val {metric} "
                f"{1 - min(values):.4f}, guessing one of {num_classes} classes gives {p:.4f})")
    if len(values) >= 3 and max(values) == min(values) > 0.0:
        return f"every mask scored the same fitness ({values[0]:.4f})"
    return None
