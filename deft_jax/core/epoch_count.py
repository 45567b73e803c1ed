"""How many training epochs over the training set this process has run: every fine-tune of a
static mask (`FineTuner.fine_tune`: final trainings, baselines, sequential fitness) and every
real (not padding) member of a population program adds the epochs it trained. A linear
probe adds none. `counting()` measures a block (the experiment: one method on one seed)."""

from __future__ import annotations

import contextlib
import dataclasses


@dataclasses.dataclass
class EpochCount:
    epochs: int = 0

    def add(self, epochs: int, members: int = 1) -> None:
        self.epochs += int(epochs) * int(members)


TOTAL = EpochCount()  # this process's count


@contextlib.contextmanager
def counting():
    """An `EpochCount` whose `epochs`, once the block ends, are those run inside it."""
    start, measured = TOTAL.epochs, EpochCount()
    try:
        yield measured
    finally:
        measured.epochs = TOTAL.epochs - start
