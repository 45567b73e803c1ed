"""What every method gets (MethodContext) and returns (MethodResult), plus the shared
final-training recipe.

All methods train with the core's recipe through the one final-training path,
`deft_jax.core.final.train_final` (the `[finetune]` optimizer settings, `final.epochs` epochs and
`final.learning_rate`, the seed's batches), and are scored once on val and test;
`final_fit` adds the one-vs-rest AUC from the softmax probabilities.

Compiled programs are kept in an `ExperimentCache` that lives as long as the experiment: the
model, optimizer and batch shapes are the same for every seed, so a mask compiled once
(for one seed or one method) is never compiled again. Wall times of later seeds and
methods therefore exclude compiles that an earlier one already paid for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import numpy as np

from deft_jax.config.schema import Config, FineTuneConfig
from deft_jax.core.final import FinalModel, train_final
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import GroupMask, mask_from_names
from deft_jax.core.metrics import (classification_report, correctness_bits, metric_from_report,
                                   roc_auc_ovr, softmax)
from deft_jax.data.inputs import PreparedData, prepare_data
from deft_jax.errors import UserError
from deft_jax.models import build_model
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.program_cache import ProgramCache


class ExperimentCache:
    """Models and fine-tuners (with their compiled programs) shared by all seeds and
    methods of one experiment."""

    def __init__(self):
        self._models: dict = {}
        self._tuners: dict = {}
        self.programs = ProgramCache()  # methods' own programs, keyed as they choose
        self._released = 0  # compiles of tuners dropped by `release_if_over`

    def model(self, cfg: Config, num_classes: int, name: str | None = None,
              weights: str | None = None) -> ModelSpec:
        name = cfg.model.name if name is None else name
        weights = cfg.model.weights if weights is None else weights
        key = (name, weights, num_classes, cfg.model.input_size, cfg.model.granularity)
        if key not in self._models:
            self._models[key] = build_model(name, num_classes, weights, cfg.model.input_size,
                                            cfg.model.granularity)
        return self._models[key]

    def tuner(self, spec: ModelSpec, cfg: FineTuneConfig, learning_rate: float | None = None,
              epochs: int | None = None, tx=None, tx_key: str | None = None) -> FineTuner:
        """A FineTuner shared by every seed and method; a custom optimizer `tx` is cached
        under `tx_key`."""
        key = (id(spec), repr(cfg), learning_rate, epochs, tx_key)
        if key not in self._tuners:
            self._tuners[key] = FineTuner(spec, cfg, learning_rate=learning_rate, epochs=epochs, tx=tx)
        return self._tuners[key]

    def compiles(self) -> int:
        """Programs compiled so far (the tuners' fine-tunes and the methods' own), including
        those since released."""
        return self._released + sum(t.compiles for t in self._tuners.values()) + self.programs.compiles

    def _live_compiles(self) -> int:
        return sum(t.compiles for t in self._tuners.values()) + len(self.programs)

    def release_if_over(self, limit: int) -> bool:
        """Drop every cached fine-tune program (and JAX's compile caches) once more than
        `limit` are alive. XLA:CPU keeps each executable's machine code in one process
        and a long experiment can run out of code memory ("LLVM ERROR: Unable to allocate
        section memory"); the runner calls this between seeds, so only later seeds pay
        the recompiles. Models (weights) are kept."""
        if self._live_compiles() <= limit:
            return False
        self._released += sum(t.compiles for t in self._tuners.values())
        self._tuners.clear()
        self.programs.clear()
        jax.clear_caches()
        return True


@dataclasses.dataclass
class MethodContext:
    """Inputs of one (seed, method) run."""

    cfg: Config                 # this seed's config: seed = base + s, data.split_seed = base + s
    data: PreparedData          # this seed's split, preprocessed for `spec`
    spec: ModelSpec             # the backbone with its pretrained weights (model.weights)
    variables: dict             # its variables; the new head is initialised from cfg.seed
    seed: int                   # seed index s (0-based)
    previous: dict = dataclasses.field(default_factory=dict)  # method -> record, same seed
    programs: ExperimentCache = dataclasses.field(default_factory=ExperimentCache)
    state_dir: Path | None = None  # where a method may keep resumable state

    def data_for(self, spec: ModelSpec) -> PreparedData:
        """This seed's split preprocessed for another model (its input size, mean, std)."""
        if (spec.input_size, spec.mean, spec.std) == (self.spec.input_size, self.spec.mean, self.spec.std):
            return self.data
        data = prepare_data(self.cfg, spec, self.data.dataset)
        assert all(np.array_equal(data.splits[k], self.data.splits[k]) for k in data.splits)
        return data

    def mask_of(self, names, spec: ModelSpec | None = None) -> GroupMask:
        groups = (spec or self.spec).group_names
        try:
            return mask_from_names(list(names), groups)
        except ValueError:
            unknown = sorted(set(names) - set(groups))
            raise UserError(f"unknown layer group(s) {', '.join(unknown)} for {(spec or self.spec).name}; "
                            f"known: {', '.join(groups)}") from None


@dataclasses.dataclass
class MethodResult:
    test: dict                  # n, accuracy, macro_f1, auc, per_class_recall, confusion_matrix
    val: dict
    trainable_fraction: float   # fraction of parameters that received updates
    fitness_evaluations: int = 0  # distinct masks trained by a search
    mask: GroupMask | None = None  # static layer-group mask, where the method has one
    history: list[dict] | None = None  # per-generation search log (deft)
    extra: dict = dataclasses.field(default_factory=dict)


def scores(logits: np.ndarray, labels: np.ndarray, class_names: list[str], items: bool = False) -> dict:
    """classification_report + macro one-vs-rest AUC from softmax probabilities; `items`:
    also which items are right ("correct_bits", `core.metrics.correctness_bits`), for the
    fixed-split statistics that pair two methods item by item."""
    report = classification_report(logits, labels, class_names)
    report["auc"] = roc_auc_ovr(labels, softmax(logits), len(class_names))
    if items:
        report["correct_bits"] = correctness_bits(logits, labels)
    return report


def all_groups(spec: ModelSpec) -> GroupMask:
    return {g: True for g in spec.group_names}


def result_of(final: FinalModel, data: PreparedData, mask: Mapping[str, bool] | None) -> MethodResult:
    """A MethodResult scored from a final model's val and test logits."""
    names = data.class_names
    return MethodResult(
        test=scores(final.test_logits, data.y_test, names, items=True),
        val=scores(final.val_logits, data.arrays.y_val, names),
        trainable_fraction=final.trainable_fraction,
        mask=dict(mask) if mask is not None else None,
        extra={"final_loss_first_last": [final.losses[0], final.losses[-1]] if final.losses else None})


def fit_with_learning_rates(ctx: MethodContext, mask: Mapping, tuner_for: Callable[[float | None], FineTuner],
                            spec: ModelSpec | None = None, variables: dict | None = None,
                            data: PreparedData | None = None) -> tuple[MethodResult, FineTuner]:
    """Final training of `mask` at final.learning_rate, or at each rate of
    `experiment.learning_rates` keeping the one with the best validation metric
    (`search.metric`; the first rate of the grid on ties). Returns the result (with the
    grid's validation scores in `extra`) and the winning rate's tuner."""
    spec = ctx.spec if spec is None else spec
    variables = ctx.variables if variables is None else variables
    data = ctx.data if data is None else data
    cfg = ctx.cfg
    grid = list(cfg.experiment.learning_rates) or [cfg.final.learning_rate]
    best = None
    scores = {}
    for lr in grid:
        tuner = tuner_for(lr)
        final = train_final(cfg, spec, variables, mask, data, tuner=tuner)
        result = result_of(final, data, mask)
        score = metric_from_report(cfg.search.metric, result.val)
        scores[str(lr)] = score
        if best is None or score > best[0]:
            best = (score, result, tuner, lr, final)
    _, result, tuner, lr, final = best
    result.extra["final_epoch_kept"] = final.epoch_kept
    if len(grid) > 1:
        result.extra.update({"learning_rate": lr, "learning_rate_val_scores": scores})
    return result, tuner


def final_fit(ctx: MethodContext, mask: Mapping, spec: ModelSpec | None = None,
              variables: dict | None = None, data: PreparedData | None = None) -> MethodResult:
    """Final training of a static mask (the core recipe; the learning-rate grid when the
    experiment has one), scored on val and test."""
    spec = ctx.spec if spec is None else spec
    cfg = ctx.cfg

    def tuner_for(learning_rate: float | None) -> FineTuner:
        return ctx.programs.tuner(spec, cfg.finetune, learning_rate, cfg.final.epochs)

    return fit_with_learning_rates(ctx, mask, tuner_for, spec, variables, data)[0]
