"""Final training: fine-tune the winning mask with the full budget, score val and test."""

from __future__ import annotations

import time

import numpy as np

from deft_jax.config import Config
from deft_jax.finetune import FineTuner
from deft_jax.inputs import PreparedData
from deft_jax.masks import GroupMask, trainable_fraction
from deft_jax.metrics import classification_report
from deft_jax.models.base import ModelSpec


def train_final(cfg: Config, spec: ModelSpec, variables: dict, mask: GroupMask,
                data: PreparedData) -> tuple[dict, dict]:
    """Returns (trained variables, metrics) with metrics = {"test": {...}, "val": {...}, ...}."""
    t0 = time.perf_counter()
    tuner = FineTuner(spec, cfg.finetune, learning_rate=cfg.final.learning_rate,
                      epochs=cfg.final.epochs)
    a = data.arrays
    trained, losses = tuner.fine_tune(variables, mask, a.x_train, a.y_train, seed=cfg.seed)
    train_seconds = time.perf_counter() - t0
    names = data.class_names
    metrics = {
        "test": classification_report(tuner.logits(trained, data.x_test), data.y_test, names),
        "val": classification_report(tuner.logits(trained, a.x_val), a.y_val, names),
        "trainable_fraction": trainable_fraction(variables["params"], spec.group_rules, mask),
        "final_epochs": cfg.final.epochs,
        "final_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "final_train_seconds": round(train_seconds, 2),
    }
    return trained, metrics


def predictions_agree(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))
