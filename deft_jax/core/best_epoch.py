"""The one best-epoch rule: which epoch of a fine-tune a member keeps (its validation logits,
epoch number and, for final training, its variables). Fitness and final training share it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deft_jax.core import divergence
from deft_jax.core.masks import GroupMask


class BestEpoch:
    """Per member, the validation logits of its best epoch so far (`final.keep = "best-val"`:
    fitness = the best validation score along the fine-tune, earliest epoch on ties) or of
    its last epoch (`"last"`), with that epoch's number and an optional payload (final
    training keeps the epoch's variables). A diverged epoch scores the worst finite
    fitness, so the first epoch is always recorded."""

    def __init__(self, keep: str, metric: str, y_val: np.ndarray, num_classes: int):
        self.keep, self.metric, self.y_val, self.num_classes = keep, metric, y_val, num_classes
        self.fitness: dict[int, float] = {}
        self.logits: dict[int, np.ndarray] = {}
        self.epoch: dict[int, int] = {}
        self.payload: dict[int, object] = {}

    def offer(self, member: int, logits: np.ndarray, mask: GroupMask, epoch: int = -1,
              payload: Callable[[], object] | None = None) -> None:
        """Record `member`'s epoch if `keep` says so; `payload()` is called only then."""
        if self.keep != "last":
            fitness = divergence.fitness_from_logits(self.metric, logits, self.y_val, self.num_classes, mask)
            if not fitness < self.fitness.get(member, np.inf):  # strict: the earliest epoch on ties
                return
            self.fitness[member] = fitness
        self.logits[member], self.epoch[member] = logits, epoch
        if payload is not None:
            self.payload[member] = payload()
