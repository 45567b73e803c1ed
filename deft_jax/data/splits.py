"""Deterministic, seeded, stratified and grouped train/val/test splits.

Groups are the unit: every sample of a group lands in the same split (so crops of one
tile, or tiles of one case, never sit on both sides). Each group is stratified by its
majority label (ties -> the smaller class id). For each class, that class's groups (sorted
by id, so the input order does not matter) are shuffled with
``np.random.default_rng([seed, class_id])`` - one stream per class, so adding or removing
a class does not reshuffle the others - and then ``round(f_val * n)`` go to val,
``round(f_test * n)`` to test (at least 1 each) and the rest (at least 1) to train.

A source may define some splits itself (a folder with train/ and test/ folders):
`complete_splits` keeps those and carves the missing ones out of train the same way, with
the fractions rescaled to what train holds (only val missing: val gets
f_val / (f_train + f_val) of train's groups per class).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deft_jax.errors import UserError
from deft_jax.runtime import rundir

SPLIT_NAMES = ("train", "val", "test")


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise UserError(f"split fractions must be three numbers (train, val, test), "
                        f"got {fractions!r}") from None
    if len(fr) != 3:
        raise UserError(f"split fractions must be three numbers (train, val, test), "
                        f"got {len(fr)}")
    if not all(math.isfinite(f) and f > 0 for f in fr):
        raise UserError(f"split fractions must all be positive, got {list(fr)}")
    if abs(sum(fr) - 1.0) > 1e-6:
        raise UserError(f"split fractions must sum to 1, got {list(fr)} (sum {sum(fr):g})")
    return fr


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _split_counts(n: int, f_val: float, f_test: float) -> tuple[int, int, int]:
    """(train, val, test) group counts for n >= 3 groups, each at least 1."""
    n_val = max(1, _round_half_up(f_val * n))
    n_test = max(1, _round_half_up(f_test * n))
    while n - n_val - n_test < 1:
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def make_splits(labels, groups, fractions=(0.6, 0.2, 0.2), seed=0,
                class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} -> sorted int64 sample indices; groups never cross splits.

    `class_names` (optional) only makes error messages name classes instead of ids.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.ndim != 1 or groups.ndim != 1 or labels.shape != groups.shape:
        raise UserError(f"labels and groups must be 1-D and the same length, got "
                        f"{list(labels.shape)} and {list(groups.shape)}")
    if labels.size == 0:
        raise UserError("cannot split an empty dataset")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise UserError("labels must be non-negative integer class ids")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"split seed must be a non-negative integer, got {seed!r}")
    _, f_val, f_test = _check_fractions(fractions)

    group_ids, group_of_sample = np.unique(groups.astype(str), return_inverse=True)
    n_classes = int(labels.max()) + 1
    # majority label per group: counts[g, c]
    counts = np.zeros((group_ids.size, n_classes), dtype=np.int64)
    np.add.at(counts, (group_of_sample, labels), 1)
    group_label = counts.argmax(axis=1)

    split_of_group = np.empty(group_ids.size, dtype=np.int8)
    for c in range(n_classes):
        members = np.flatnonzero(group_label == c)  # sorted by group id
        if members.size == 0:
            continue
        if members.size < 3:
            name = class_names[c] if class_names is not None and c < len(class_names) else c
            raise UserError(f"class '{name}' has {members.size} group"
                            f"{'' if members.size == 1 else 's'}; need at least 3 for "
                            f"train/val/test")
        rng = np.random.default_rng([int(seed), c])
        shuffled = members[rng.permutation(members.size)]
        n_train, n_val, _ = _split_counts(members.size, f_val, f_test)
        split_of_group[shuffled[:n_train]] = 0
        split_of_group[shuffled[n_train:n_train + n_val]] = 1
        split_of_group[shuffled[n_train + n_val:]] = 2

    sample_split = split_of_group[group_of_sample]
    return {name: np.flatnonzero(sample_split == i).astype(np.int64)
            for i, name in enumerate(SPLIT_NAMES)}


def _carve(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int, name: str,
           class_names: Sequence[str] | None) -> np.ndarray:
    """Boolean: the samples carved off (`fraction` of each class's groups, at least one,
    leaving at least one); groups never cross. Streams per class as in make_splits."""
    group_ids, group_of_sample = np.unique(groups.astype(str), return_inverse=True)
    counts = np.zeros((group_ids.size, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (group_of_sample, labels), 1)
    group_label = counts.argmax(axis=1)
    carved = np.zeros(group_ids.size, dtype=bool)
    for c in range(counts.shape[1]):
        members = np.flatnonzero(group_label == c)
        if members.size == 0:
            continue
        if members.size < 2:
            label = class_names[c] if class_names is not None and c < len(class_names) else c
            raise UserError(f"class '{label}' has 1 group in train; need at least 2 to carve "
                            f"a {name} split out of train")
        n = min(members.size - 1, max(1, _round_half_up(fraction * members.size)))
        shuffled = members[np.random.default_rng([int(seed), c]).permutation(members.size)]
        carved[shuffled[:n]] = True
    return carved[group_of_sample]


def complete_splits(labels, groups, given: dict[str, np.ndarray], fractions=(0.6, 0.2, 0.2),
                    seed=0, class_names: Sequence[str] | None = None
                    ) -> tuple[dict[str, np.ndarray], list[str]]:
    """({"train", "val", "test"} -> sorted indices, the split names carved out of train):
    the `given` splits (which must include train) are kept, the missing ones carved."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    missing = [n for n in SPLIT_NAMES if n not in given]
    if not missing:
        return {n: np.sort(np.asarray(given[n], dtype=np.int64)) for n in SPLIT_NAMES}, []
    if "train" in missing:
        raise UserError("the dataset defines some splits but no train split")
    f_train, f_val, f_test = _check_fractions(fractions)
    train = np.sort(np.asarray(given["train"], dtype=np.int64))
    out = {n: np.sort(np.asarray(v, dtype=np.int64)) for n, v in given.items()}
    if len(missing) == 2:
        inner = make_splits(labels[train], groups[train], fractions, seed, class_names)
        out.update({n: train[idx] for n, idx in inner.items()})
    else:
        name = missing[0]
        share = (f_val if name == "val" else f_test)
        carved = _carve(labels[train], groups[train], share / (f_train + share), seed, name,
                        class_names)
        out[name], out["train"] = train[carved], train[~carved]
    return {n: out[n] for n in SPLIT_NAMES}, missing


def save_splits(path, splits: dict[str, np.ndarray], groups, seed=None,
                fractions=None, origin: dict | None = None) -> None:
    """Write splits.json: seed, fractions, where the splits came from (`origin`, e.g. the
    folder layout and which splits it defined), indices and group ids per split."""
    groups = np.asarray(groups).astype(str)
    doc = {"seed": None if seed is None else int(seed),
           "fractions": None if fractions is None else [float(f) for f in fractions]}
    if origin is not None:
        doc["origin"] = origin
    for name, idx in splits.items():
        doc[name] = [int(i) for i in np.asarray(idx).reshape(-1)]
    doc["groups"] = {name: sorted(set(groups[np.asarray(idx, dtype=np.int64)].tolist()))
                     for name, idx in splits.items()}
    # One key per line, lists kept on one line: readable without thousands of lines.
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k != "groups"]
    group_lines = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in doc["groups"].items()]
    text = "{\n" + ",\n".join(lines + ['  "groups": {\n' + ",\n".join(group_lines) + "\n  }"])
    text += "\n}\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rundir.write_text_atomic(path, text)  # fsynced, a unique temporary name, a full disk is one line


def load_splits(path) -> dict[str, np.ndarray]:
    """{"train", "val", "test"} -> int64 indices from a splits.json written by save_splits."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"splits file not found: {path}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read splits file {path}: {err}") from None
    if not isinstance(doc, dict):
        raise UserError(f"splits file {path} must hold a JSON object")
    missing = [n for n in SPLIT_NAMES if n not in doc]
    if missing:
        raise UserError(f"splits file {path} is missing {', '.join(missing)}")
    out = {}
    for name in SPLIT_NAMES:
        values = doc[name]
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise UserError(f"splits file {path}: '{name}' must be a list of sample indices")
        out[name] = np.asarray(values, dtype=np.int64)
    seen = np.concatenate(list(out.values()))
    if np.unique(seen).size != seen.size:
        raise UserError(f"splits file {path}: a sample index appears in more than one split")
    return out


TRAIN_SUBSAMPLE_STREAM = 11  # `data.train_per_class` draws from default_rng([seed, 11, class_id])
VAL_SUBSAMPLE_STREAM = 12  # `data.val_per_class` draws from default_rng([seed, 12, class_id])


def subsample_per_class(train: np.ndarray, labels: np.ndarray, per_class: int, seed: int,
                        stream: int = TRAIN_SUBSAMPLE_STREAM) -> np.ndarray:
    """At most `per_class` indices of each class from `train` (seeded, one stream per class;
    sorted). The low-data setting on a large set: val and test stay as they are. `stream`
    separates the draws of the splits (VAL_SUBSAMPLE_STREAM for `data.val_per_class`)."""
    train = np.asarray(train)
    kept = []
    for c in np.unique(labels[train]):
        members = train[labels[train] == c]
        if members.size > per_class:
            rng = np.random.default_rng([int(seed), int(stream), int(c)])
            members = rng.choice(members, per_class, replace=False)
        kept.append(members)
    return np.sort(np.concatenate(kept)) if kept else train
