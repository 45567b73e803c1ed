"""Fitness of a layer-group mask: 1 - validation metric after a short fine-tune.

- `MemoTable`: identical masks are evaluated once per search (hits are counted).
- `PrefixFeatureCache`: with augmentation off, the activations entering the lowest
  trainable stage depend only on the pretrained weights and the data, so they are
  computed once per distinct prefix and the short fine-tune trains the suffix only.
- `SequentialEvaluator`: one member after another with a static mask (compiled once per
  distinct mask): no frozen-weight gradients, but a compile for every new mask.
- `evaluate_population`: memo table, feasibility and one evaluator call per population.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from deft_jax.config.schema import FineTuneConfig
from deft_jax.core import divergence, training
from deft_jax.core.best_epoch import BestEpoch
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import GroupMask, mask_key
from deft_jax.data.inputs import SplitArrays
from deft_jax.models.base import ModelSpec
from deft_jax.models.groups import LayerGroups


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
    """Features entering stage k for train and val, per k, LRU-bounded in bytes."""

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays,
                 max_bytes: int = 2 << 30):
        self.spec, self.variables, self.data = spec, variables, data
        self.max_bytes = max_bytes
        self._store: OrderedDict[int, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()
        self._fns: dict = {}
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
        train = training.logits(self.spec, self.variables, self.data.x_train, stop=start, cache=self._fns)
        val = training.logits(self.spec, self.variables, self.data.x_val, stop=start, cache=self._fns)
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


def infeasible_fitness(fraction: float, limit: float) -> float:
    """Masks training more than the allowed parameter fraction are never trained: their
    fitness is 1 + the excess, worse than any real fitness and pointing back to feasibility."""
    return 1.0 + (fraction - limit)


class SequentialEvaluator:
    """Evaluates masks one after another with static masks (compile cache per mask)."""

    name = "sequential"
    on_member_done = None  # callback(number of members just finished), e.g. progress

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays, cfg: FineTuneConfig,
                 metric: str = "accuracy", seed: int = 0, cache_prefix: bool = True,
                 keep: str = "last"):
        self.spec, self.variables, self.data = spec, variables, data
        self.cfg, self.metric, self.seed, self.keep = cfg, metric, seed, keep
        self.tuner = FineTuner(spec, cfg)
        self.cache_prefix = cache_prefix and not cfg.augment
        self.prefix = PrefixFeatureCache(spec, variables, data)

    def _fine_tune_one(self, mask: GroupMask, epochs: int | None) -> tuple[np.ndarray, list[float]]:
        """Validation logits (of the epoch `keep` says) and training losses of the mask's
        fine-tune."""
        start = training.first_trainable_stage(self.spec, mask) if self.cache_prefix else 0
        x_train, x_val = self.prefix.features(start)
        kept = BestEpoch(self.keep, self.metric, self.data.y_val, self.data.num_classes)
        variables, losses = self.tuner.fine_tune(
            self.variables, mask, x_train, self.data.y_train, seed=self.seed, start=start, epochs=epochs,
            after_epoch=None if self.keep == "last" else
            lambda epoch, v: kept.offer(0, self.tuner.logits(v, x_val, start=start), mask))
        if self.keep == "last":
            return self.tuner.logits(variables, x_val, start=start), losses
        return kept.logits[0], losses

    def evaluate_logits(self, masks: Sequence[GroupMask], epochs: int | None = None) -> np.ndarray:
        return np.stack([self._fine_tune_one(m, epochs)[0] for m in masks])

    def evaluate(self, masks: Sequence[GroupMask], epochs: int | None = None) -> list[float]:
        out = []
        for mask in masks:
            logits, losses = self._fine_tune_one(mask, epochs)
            out.append(divergence.fitness_from_logits(self.metric, logits, self.data.y_val,
                                                      self.data.num_classes, mask,
                                                      losses if self.keep == "last" else None))
            if self.on_member_done is not None:
                self.on_member_done(1)
        return out

    def stats(self) -> dict:
        return {"compiles": self.tuner.compiles, **(self.prefix.stats() if self.cache_prefix else {})}


@dataclasses.dataclass(frozen=True)
class Halving:
    """Successive halving inside a generation: every new member trains `short_epochs` of the
    fitness schedule, the best `promote_fraction` (at least one) the whole schedule."""

    short_epochs: int
    promote_fraction: float

    def promoted(self, n: int) -> int:
        return min(n, max(1, int(self.promote_fraction * n + 0.5)))  # rounded, at least one


def evaluate_population(evaluator, masks: Sequence[GroupMask], memo: MemoTable,
                        groups: LayerGroups, max_fraction: float = 1.0,
                        halving: Halving | None = None) -> tuple[list[float], dict]:
    """Fitness per mask: memo hits and infeasible masks cost nothing; the distinct new
    feasible masks go to the evaluator in one call (one population program for vmap). With
    `halving`, they all get the short budget first and the most promising the whole one; a
    member left at the short budget keeps its short fitness (with keep = "best-val" never
    better than its whole-budget fitness would be: the short run is a prefix of the long)."""
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
            fitness[key] = infeasible_fitness(fraction, max_fraction)
            infeasible += 1
            continue
        todo[key] = mask
    promoted = 0
    if todo:
        new_keys, new_masks = list(todo), list(todo.values())
        if halving is None:
            values = evaluator.evaluate(new_masks)
        else:
            values = list(evaluator.evaluate(new_masks, epochs=halving.short_epochs))
            ranked = sorted(range(len(values)), key=lambda i: (values[i], i))
            best = ranked[:halving.promoted(len(new_masks))]
            for i, value in zip(best, evaluator.evaluate([new_masks[i] for i in best])):
                values[i] = value
            # then every member whose short score already beats the best whole-budget score
            # (of earlier generations or just promoted): the incumbent is always scored
            # with the whole budget
            incumbent = min(list(memo.full_budget().values()) + [values[i] for i in best])
            more = [i for i in ranked[len(best):] if values[i] < incumbent]
            if more:
                for i, value in zip(more, evaluator.evaluate([new_masks[i] for i in more])):
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
                                         "infeasible": infeasible, "promoted": promoted}
