"""Grouped, stratified, seeded train/val/test splits and their splits.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deft_jax.errors import UserError
from deft_jax.data.splits import load_splits, make_splits, save_splits


def grouped_toy(n_classes=3, groups_per_class=10, per_group=3):
    labels, groups = [], []
    for c in range(n_classes):
        for g in range(groups_per_class):
            labels += [c] * per_group
            groups += [f"c{c}_g{g}"] * per_group
    return np.array(labels, dtype=np.int32), np.array(groups)


def test_splits_are_stratified_and_deterministic_for_a_seed():
    labels, groups = grouped_toy()
    a = make_splits(labels, groups, fractions=(0.6, 0.2, 0.2), seed=7)
    b = make_splits(labels, groups, fractions=(0.6, 0.2, 0.2), seed=7)
    assert set(a) == {"train", "val", "test"}
    for k in a:
        assert np.array_equal(a[k], b[k])
        assert np.all(np.diff(a[k]) > 0)  # sorted, unique
    # Every sample exactly once.
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(labels.size))
    # Stratified: each class gives 6/2/2 of its 10 groups (x3 samples).
    for c in range(3):
        assert [int(np.sum(labels[a[k]] == c)) for k in ("train", "val", "test")] == [18, 6, 6]
    # Input order does not matter: a permuted dataset gives the same groups per split.
    perm = np.random.default_rng(1).permutation(labels.size)
    p = make_splits(labels[perm], groups[perm], seed=7)
    for k in a:
        assert set(groups[perm][p[k]].tolist()) == set(groups[a[k]].tolist())


def test_groups_never_cross_splits_and_use_their_majority_label():
    labels, groups = grouped_toy(n_classes=2, groups_per_class=5, per_group=4)
    labels[0] = 1  # group c0_g0 is 3x class 0, 1x class 1 -> stratified as class 0
    splits = make_splits(labels, groups, seed=3)
    sets = {k: set(groups[v].tolist()) for k, v in splits.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    class0 = {f"c0_g{i}" for i in range(5)}
    assert [len(sets[k] & class0) for k in ("train", "val", "test")] == [3, 1, 1]


def test_small_classes_still_get_one_group_in_each_split():
    labels, groups = grouped_toy(n_classes=2, groups_per_class=3, per_group=1)
    splits = make_splits(labels, groups, fractions=(0.8, 0.1, 0.1), seed=0)
    for k in ("train", "val", "test"):
        assert sorted(labels[splits[k]].tolist()) == [0, 1]


def test_different_seeds_give_different_splits():
    labels, groups = grouped_toy()
    results = [make_splits(labels, groups, seed=s)["test"].tolist() for s in range(5)]
    assert len({tuple(r) for r in results}) == 5


def test_splits_round_trip_through_json(tmp_path):
    labels, groups = grouped_toy(per_group=2)
    splits = make_splits(labels, groups, fractions=(0.5, 0.25, 0.25), seed=11)
    path = tmp_path / "run" / "splits.json"
    save_splits(path, splits, groups, seed=11, fractions=(0.5, 0.25, 0.25))
    loaded = load_splits(path)
    assert set(loaded) == {"train", "val", "test"}
    for k in splits:
        assert np.array_equal(loaded[k], splits[k])
    doc = json.loads(path.read_text())
    assert doc["seed"] == 11 and doc["fractions"] == [0.5, 0.25, 0.25]
    assert doc["groups"]["val"] == sorted(set(groups[splits["val"]].tolist()))
    assert len(path.read_text().splitlines()) < 20  # human-readable, one key per line


def test_a_class_with_fewer_than_three_groups_is_a_user_error():
    labels, groups = grouped_toy(n_classes=2, groups_per_class=3)
    keep = groups != "c1_g2"
    with pytest.raises(UserError, match="class 'malignant' has 2 groups; need at least 3"):
        make_splits(labels[keep], groups[keep], class_names=["benign", "malignant"])
    with pytest.raises(UserError, match="class '1' has 2 groups"):
        make_splits(labels[keep], groups[keep])


@pytest.mark.parametrize("fractions, problem", [
    ((0.6, 0.3, 0.3), "sum to 1"),
    ((0.8, 0.3, -0.1), "positive"),
    ((1.0, 0.0, 0.0), "positive"),
    ((0.5, 0.5), "three numbers"),
])
def test_bad_fractions_are_a_user_error(fractions, problem):
    labels, groups = grouped_toy()
    with pytest.raises(UserError, match=problem):
        make_splits(labels, groups, fractions=fractions)


def test_a_missing_or_broken_splits_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="splits file not found"):
        load_splits(tmp_path / "splits.json")
    (tmp_path / "splits.json").write_text('{"train": [0, 1], "val": [1]}')
    with pytest.raises(UserError, match="missing test"):
        load_splits(tmp_path / "splits.json")
    (tmp_path / "splits.json").write_text('{"train": [0, 1], "val": [1], "test": [2]}')
    with pytest.raises(UserError, match="more than one split"):
        load_splits(tmp_path / "splits.json")
