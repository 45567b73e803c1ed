"""The in-memory dataset every loader returns."""

from __future__ import annotations

import dataclasses

import numpy as np

from deft_jax.errors import UserError

# ImageNet-1k's count: more classes than any dataset here is for; per-class results (a
# C x C confusion matrix in metrics.json and report.md) stay small
MAX_CLASSES = 1000


@dataclasses.dataclass
class Dataset:
    images: np.ndarray      # uint8 [N, H, W, 3] RGB (all same size)
    labels: np.ndarray      # int32 [N], 0..C-1
    groups: np.ndarray      # [N] str group id; samples sharing a group never cross a split
    class_names: list[str]
    description: str        # one line, e.g. "digits: 1797 images, 10 classes"
    # name -> indices of the splits the source defines itself (npz: all three; a folder
    # with split folders: those it has, the others are carved out of train)
    predefined_splits: dict[str, np.ndarray] | None = None
    origin: dict | None = None  # how the source was read (layout, split folders ...), JSON

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


def check_class_count(count: int, where: str, what: str = "classes") -> None:
    """At most MAX_CLASSES classes, checked before anything per class is allocated."""
    if count > MAX_CLASSES:
        raise UserError(f"{where} has {count:,} {what}, more than the {MAX_CLASSES} this supports")


def require_two_classes(labels: np.ndarray, class_names: list[str], where: str) -> None:
    """The check that a dataset has at least 2 classes present (every source kind)."""
    present = np.unique(labels)
    if present.size < 2:
        name = class_names[int(present[0])] if present.size else "none"
        raise UserError(f"only one class found in {where} ('{name}'); need at least 2 classes")
