"""k stratified folds over train+val (`search.folds = k`): the fitness of a mask is the mean
over the folds of its fitness trained on the other folds and scored on this one.

Positions are into train+val in that order (the training split's items, then the
validation split's). Groups are the unit, as in `deft_jax.data.splits`: every item of a
group lands in the same fold, each group counted under its majority label (ties -> the
smaller class id). Per class, that class's groups (sorted by id) are shuffled with
``np.random.default_rng([seed, FOLD_STREAM, class_id])`` and dealt, largest first (a stable
sort, so equal sizes keep the shuffled order), each to the fold holding the fewest items of
that class, ties to the fold with the fewest items in all, then the lowest fold: with one
item per group, every fold's count of every class is within one of the others', and its
size within one of the others'. Deterministic given the seed (the run's `seed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from deft_jax.data.normalize import NormalizedImages
from deft_jax.errors import UserError

FOLD_STREAM = 13  # folds draw from default_rng([seed, 13, class_id]) (splits.py: 11, 12)


def _group_labels(labels: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(group of each item, majority label of each group); one group per item without groups."""
    if groups is None:
        return np.arange(labels.size), labels
    _, group_of_item = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = np.zeros((group_of_item.max() + 1, int(labels.max()) + 1), np.int64)
    np.add.at(counts, (group_of_item, labels), 1)
    return group_of_item, counts.argmax(axis=1)


def check_folds(labels, k: int, groups=None, class_names: Sequence[str] | None = None) -> None:
    """A one-line UserError unless every class present has at least k groups (items, without
    groups) in train+val: each fold must validate on some of every class."""
    if k < 2:
        return
    labels = np.asarray(labels, np.int64)
    _, group_label = _group_labels(labels, groups)
    for c in np.unique(group_label):
        n = int(np.sum(group_label == c))
        if n < k:
            name = class_names[c] if class_names is not None and c < len(class_names) else int(c)
            unit = "groups" if groups is not None and np.unique(np.asarray(groups)).size < labels.size else "images"
            raise UserError(f"search.folds = {k} needs at least {k} {unit} of every class in train+val; "
                            f"class '{name}' has {n} (lower search.folds, or use 1)")


def stratified_folds(labels, k: int, seed: int, groups=None) -> list[np.ndarray]:
    """k sorted int64 arrays of positions into `labels` (train+val), every position in
    exactly one (see the module's docstring for the rule)."""
    labels = np.asarray(labels, np.int64)
    group_of_item, group_label = _group_labels(labels, groups)
    sizes = np.bincount(group_of_item, minlength=group_label.size)
    fold_of_group = np.empty(group_label.size, np.int64)
    totals = np.zeros(k, np.int64)
    for c in range(int(labels.max()) + 1 if labels.size else 0):
        members = np.flatnonzero(group_label == c)
        if members.size == 0:
            continue
        shuffled = members[np.random.default_rng([int(seed), FOLD_STREAM, c]).permutation(members.size)]
        in_class = np.zeros(k, np.int64)
        for g in shuffled[np.argsort(-sizes[shuffled], kind="stable")]:
            fold = min(range(k), key=lambda f: (in_class[f], totals[f], f))
            fold_of_group[g] = fold
            in_class[fold] += sizes[g]
            totals[fold] += sizes[g]
    fold_of_item = fold_of_group[group_of_item]
    return [np.flatnonzero(fold_of_item == f).astype(np.int64) for f in range(k)]


def take(x, positions: np.ndarray):
    """The items of `x` (an array, or a `NormalizedImages` view: a view again) at `positions`."""
    if isinstance(x, NormalizedImages):  # the same images, fewer positions
        return NormalizedImages(x.images, x.mean, x.std, index=positions if x.index is None else x.index[positions])
    return np.asarray(x)[positions]


def joined(a, b):
    """`a` then `b` (arrays, or two `NormalizedImages` views of the same images: a view)."""
    views = isinstance(a, NormalizedImages) and isinstance(b, NormalizedImages)
    if views and a.images is b.images and (a.mean, a.std) == (b.mean, b.std):
        whole = np.arange(len(a.images))
        index = np.concatenate([whole if a.index is None else a.index, whole if b.index is None else b.index])
        return NormalizedImages(a.images, a.mean, a.std, index=index)
    return np.concatenate([np.asarray(a), np.asarray(b)])


@dataclasses.dataclass
class Folds:
    """train+val of a `SplitArrays` (`x`, `y`) and its k folds (positions into them)."""

    data: object  # the SplitArrays they come from
    x: object
    y: np.ndarray
    folds: list[np.ndarray]

    @classmethod
    def of(cls, data, k: int, seed: int) -> "Folds":
        """The folds of `data` (a `SplitArrays`; its `groups`, where it has them, kept together)."""
        y = np.concatenate([data.y_train, data.y_val])
        check_folds(y, k, data.groups)
        return cls(data, joined(data.x_train, data.x_val), y, stratified_folds(y, k, seed, data.groups))

    def _arrays(self, train: np.ndarray, val: np.ndarray):
        return dataclasses.replace(self.data, x_train=take(self.x, train), y_train=self.y[train],
                                   x_val=take(self.x, val), y_val=self.y[val], groups=None)

    def split(self, f: int):
        """The `SplitArrays` of fold f: train = the other folds (in train+val order), val = fold f."""
        return self._arrays(np.sort(np.concatenate([p for i, p in enumerate(self.folds) if i != f])), self.folds[f])

    def all_train(self):
        """The `SplitArrays` that trains on all of train+val, with an empty validation split."""
        return pooled(self.data)


def pooled(data):
    """`data` (a `SplitArrays`) training on train+val (train items first), with an empty
    validation split: what a final model of a k-fold search and `full-trainval` train on."""
    x = joined(data.x_train, data.x_val)
    return dataclasses.replace(data, x_train=x, y_train=np.concatenate([data.y_train, data.y_val]),
                               x_val=take(x, np.zeros(0, np.int64)), y_val=data.y_val[:0], groups=None)


def scored_items(folds: int, data) -> int:
    """How many items a fitness is measured on: the validation split, or with k >= 2 folds
    all of train+val (each once, out of fold)."""
    return len(data.y_val) + (len(data.y_train) if folds >= 2 else 0)
