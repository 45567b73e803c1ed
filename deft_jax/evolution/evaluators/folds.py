"""`FoldedEvaluator`: k-fold fitness over train+val (`search.folds = k`).

The train and val splits are pooled and cut into k stratified folds
(`deft_jax.data.folds`); one evaluator of the run's evaluation mode is built per fold, on
that fold's `SplitArrays` (train = the other folds, val = this fold), and a mask's fitness
is the mean of the k folds' fitnesses, each computed exactly as without folds (the same
recipe, metric, kept epoch and divergence rule). With `search.start = "probe"` each fold's
fine-tunes start from a probe fitted on that fold's own split (`start_variables`), so no
fold validates on images its start has seen the labels of.

The folds run one after another, each over the whole population (a vmapped or sharded
evaluator still runs its members as one program per fold). The folds are not extra
members of one population program: the members of a program share one stack of batches
(`batches.training_batches`, replicated on every device), while the folds train on
different images, of different counts (the folds differ by up to one image per class,
so even their steps per epoch may differ); folding them into one program would need
per-member batches and masked padding steps in the training program. A loop over folds
costs k programs' time instead of one wider program's.

For the final training (`deft_jax.evolution.final_inputs`) it keeps, per mask trained with
the whole fitness budget, each fold's kept epoch and the out-of-fold validation logits
(`record`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core.masks import GroupMask, mask_key
from deft_jax.data.folds import Folds
from deft_jax.data.inputs import SplitArrays
from deft_jax.evolution.evaluators.recipe import fitness_recipe
from deft_jax.evolution.start import start_variables
from deft_jax.models.base import ModelSpec

logger = logging.getLogger(__name__)

# counters of the fold evaluators' `stats` that are settings, not sums over the folds
NOT_SUMMED = ("members_per_program", "devices", "prefix_hit_rate", "memory_fit")


class FoldedEvaluator:
    """The `Evaluator` protocol (`deft_jax.evolution.evaluators.choice`) over k folds:
    fitness = the mean of the folds' fitnesses."""

    on_member_done = None  # told how many masks just finished all their folds
    on_member_scored = None  # told (index, mean fitness) of each mask once its last fold is done

    def __init__(self, folds: Folds, evaluators: Sequence, whole_epochs: int):
        """`evaluators[f]` scores on `folds.split(f)`; `whole_epochs`: the fitness recipe's."""
        self.folds, self.evaluators, self.whole_epochs = folds, list(evaluators), whole_epochs
        self.k = len(self.evaluators)
        self.name = f"{self.evaluators[0].name}, {self.k} folds"
        self.models: dict = {}  # never any: a fold's model saw part of train+val (final.reuse)
        # mask key -> (each fold's kept epoch, 0-based; out-of-fold logits in train+val order)
        self.records: dict[str, tuple[list[int], np.ndarray]] = {}
        for evaluator in self.evaluators:
            evaluator.kept = {}
        self._finished = self._told = 0

    def _advance(self, count: int) -> None:
        """A fold evaluator finished `count` members: tell `on_member_done` the masks done."""
        self._finished += count
        masks_done = self._finished // self.k
        if self.on_member_done is not None and masks_done > self._told:
            self.on_member_done(masks_done - self._told)
        self._told = masks_done

    def evaluate(self, masks: Sequence[GroupMask], epochs: int | None = None) -> list[float]:
        """The mean over the folds of each mask's fitness, in order; `epochs` as `Evaluator`."""
        values: list[list[float]] = []
        self._finished = self._told = 0

        def last_fold_scored(i: int, value: float) -> None:
            if self.on_member_scored is not None:
                self.on_member_scored(i, mean([v[i] for v in values] + [value]))

        for f, evaluator in enumerate(self.evaluators):
            evaluator.on_member_done = self._advance
            evaluator.on_member_scored = last_fold_scored if f == self.k - 1 else None
            try:
                values.append(list(evaluator.evaluate(masks) if epochs is None
                                   else evaluator.evaluate(masks, epochs=epochs)))
            finally:
                evaluator.on_member_done = evaluator.on_member_scored = None
            self._collect(f, masks, epochs)
        return [mean([v[i] for v in values]) for i in range(len(masks))]

    def evaluate_logits(self, masks: Sequence[GroupMask], epochs: int | None = None) -> np.ndarray:
        """Out-of-fold logits [len(masks), n_train + n_val, classes], in train+val order (the
        train split's items, then the val split's): each item's logits from the fine-tune of
        the fold that validates on it, trained on the other folds."""
        out = None
        for f, evaluator in enumerate(self.evaluators):
            logits = evaluator.evaluate_logits(masks) if epochs is None else evaluator.evaluate_logits(masks, epochs)
            if out is None:
                out = np.zeros((len(masks), len(self.folds.y)) + logits.shape[2:], logits.dtype)
            out[:, self.folds.folds[f]] = logits
            self._collect(f, masks, epochs)
        return out

    def _collect(self, f: int, masks: Sequence[GroupMask], epochs: int | None) -> None:
        """Fold f's kept epochs and validation logits of whole-budget fine-tunes into `records`."""
        kept, self.evaluators[f].kept = getattr(self.evaluators[f], "kept", None) or {}, {}
        if epochs is not None and epochs < self.whole_epochs:
            return
        for mask in masks:
            key = mask_key(mask)
            if key not in kept:
                continue
            epoch, logits = kept[key]
            if key not in self.records or f == 0:
                self.records[key] = ([-1] * self.k, np.zeros((len(self.folds.y),) + logits.shape[1:], logits.dtype))
            self.records[key][0][f] = self.whole_epochs - 1 if epoch < 0 else int(epoch)
            self.records[key][1][self.folds.folds[f]] = logits

    def record(self, mask: GroupMask) -> tuple[list[int], np.ndarray]:
        """(each fold's kept epoch, the out-of-fold logits) of `mask`'s whole-budget
        fine-tunes; fine-tuned again (k fine-tunes, logged) where the search did not keep
        them (its fitness restored from the journal or the state on a resume)."""
        key = mask_key(mask)
        if key not in self.records or min(self.records[key][0]) < 0:
            logger.info(f"note: the folds' fine-tunes of the selected mask were not kept (resumed search); "
                        f"fine-tuning it again on the {self.k} folds for its epochs and out-of-fold scores")
            logits = self.evaluate_logits([mask])[0]
            if key not in self.records:  # fold evaluators that keep no epochs: the last ones
                logger.warning(f"warning: the fold evaluators ({self.name}) do not report their kept epochs; "
                               "taking the last epoch of each")
                self.records[key] = ([self.whole_epochs - 1] * self.k, logits)
        return self.records[key]

    def stats(self) -> dict:
        every = [e.stats() for e in self.evaluators]
        out = {key: (value if key in NOT_SUMMED or not isinstance(value, (int, float))
                     else sum(s.get(key, 0) for s in every)) for key, value in every[0].items()}
        if "prefix_hit_rate" in out:
            total = out["prefix_hits"] + out["prefix_misses"]
            out["prefix_hit_rate"] = out["prefix_hits"] / total if total else 0.0
        return {"folds": self.k, **out}


def mean(values: Sequence[float]) -> float:
    """The folds' mean fitness: their sum (in fold order) over k."""
    return sum(values) / len(values)


def folded_evaluator(cfg: Config, spec: ModelSpec, variables: dict, data: SplitArrays,
                     build: Callable[[dict, SplitArrays], object]) -> FoldedEvaluator:
    """The `FoldedEvaluator` of a run: `cfg.search.folds` folds of `data` seeded by `cfg.seed`,
    `build(start variables, fold split)` the evaluator of each fold. `variables`: the run's
    start (with `search.start = "probe"` a probe's head: each fold fits its own, from a
    zero head as every probe, so the run's head does not enter)."""
    folds = Folds.of(data, cfg.search.folds, cfg.seed)
    evaluators = []
    for f in range(cfg.search.folds):
        split = folds.split(f)
        start = start_variables(cfg, spec, variables, split)[0] if cfg.search.start == "probe" else variables
        evaluators.append(build(start, split))
    return FoldedEvaluator(folds, evaluators, fitness_recipe(cfg).finetune.epochs)
