"""Final training: the one path that fine-tunes a chosen static mask with the full budget
(`final.epochs`, `final.learning_rate`) and scores it once on val and test. The search
pipeline and every baseline method of the experiment use it.

`final.keep = "best-val"` returns the model of the epoch with the best validation metric
(`search.metric`, earliest on ties) instead of the last one: a mask that overfits after its
first epochs keeps its good early model. A search with `search.schedule = "final"` scores
its candidates with exactly this recipe, so its fitness is the final model's validation
score."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core.best_epoch import BestEpoch
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import GroupMask
from deft_jax.core.metrics import classification_report
from deft_jax.data.inputs import PreparedData
from deft_jax.models.base import ModelSpec


@dataclasses.dataclass
class FinalModel:
    variables: dict             # trained {'params', 'batch_stats'}
    val_logits: np.ndarray
    test_logits: np.ndarray
    losses: list[float]         # per step
    trainable_fraction: float
    train_seconds: float
    epoch_kept: int = -1        # 0-based epoch of the returned model (final.keep)


def final_tuner(cfg: Config, spec: ModelSpec) -> FineTuner:
    return FineTuner(spec, cfg.finetune, learning_rate=cfg.final.learning_rate, epochs=cfg.final.epochs)


def train_final(cfg: Config, spec: ModelSpec, variables: dict, mask: GroupMask, data: PreparedData,
                tuner: FineTuner | None = None) -> FinalModel:
    """Train `mask` from `variables` with the final recipe (or the given tuner's), keep the
    model `final.keep` says, then score it on val (none: `search.folds` trains on train+val)
    and test."""
    tuner = final_tuner(cfg, spec) if tuner is None else tuner
    t0 = time.perf_counter()
    a = data.arrays
    if cfg.final.keep == "last":
        trained, losses = tuner.fine_tune(variables, dict(mask), a.x_train, a.y_train, seed=cfg.seed)
        seconds = time.perf_counter() - t0
        val = tuner.logits(trained, a.x_val) if len(a.y_val) else np.zeros((0, a.num_classes), np.float32)
        return FinalModel(trained, val, tuner.logits(trained, data.x_test),
                          losses, spec.layer_groups.fraction(mask), seconds, tuner.epochs - 1)
    kept = BestEpoch(cfg.final.keep, cfg.search.metric, a.y_val, a.num_classes)

    def after_epoch(epoch: int, current: dict) -> None:
        kept.offer(0, tuner.logits(current, a.x_val), mask, epoch, lambda: jax.device_get(current))

    _, losses = tuner.fine_tune(variables, dict(mask), a.x_train, a.y_train, seed=cfg.seed,
                                after_epoch=after_epoch)
    seconds = time.perf_counter() - t0
    trained = kept.payload[0]
    return FinalModel(trained, kept.logits[0], tuner.logits(trained, data.x_test), losses,
                      spec.layer_groups.fraction(mask), seconds, kept.epoch[0])


def final_metrics(cfg: Config, final: FinalModel, data: PreparedData) -> dict:
    """{"test": ..., "val": ..., ...} as written to metrics.json."""
    names = data.class_names
    return {
        "test": classification_report(final.test_logits, data.y_test, names),
        "val": classification_report(final.val_logits, data.arrays.y_val, names),
        "trainable_fraction": final.trainable_fraction,
        "final_epochs": cfg.final.epochs,
        "final_keep": cfg.final.keep,
        "final_epoch_kept": final.epoch_kept,
        "final_loss_first_last": [final.losses[0], final.losses[-1]] if final.losses else None,
        "final_train_seconds": round(final.train_seconds, 2),
    }
