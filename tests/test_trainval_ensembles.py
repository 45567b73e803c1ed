"""Ensembles trained on train+val: `deft-trio` (a one-epoch mask screen, then three members
with their own training seeds), its ablation `deft-trio-full` (every mask the full one, no
screen), `full-trainval-ensemble`, and the goal declared with them."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import digits_method_context, static_fine_tunes

from deft_jax.config.schema import load_config
from deft_jax.core.ensemble import member_seed, retrained_member_masks, trained_members
from deft_jax.core.masks import mask_from_key, mask_key
from deft_jax.errors import UserError
from deft_jax.experiment.goals import same_budget_goal
from deft_jax.methods import METHODS
from deft_jax.methods.deft import member_epochs, variant_config


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_distinct_member_seeds_step_by_a_thousand_and_shared_ones_stay_the_runs_seed():
    cfg = load_config(None, ["seed=3", 'final.member_seeds="distinct"'])
    assert [member_seed(cfg, j) for j in range(3)] == [3, 1003, 2003]
    shared = load_config(None, ["seed=3"])
    assert [member_seed(shared, j) for j in range(3)] == [3, 3, 3]


def test_members_of_one_mask_differ_only_with_distinct_seeds():
    ctx = digits_method_context(**{"final.epochs": "1"})
    full = {g: True for g in ctx.spec.group_names}
    for seeds, differ in (("shared", False), ("distinct", True)):
        cfg = load_config(None, [f'final.member_seeds="{seeds}"', "final.epochs=1", "finetune.batch_size=32"])
        members = trained_members(cfg, ctx.spec, ctx.variables, [full, full], ctx.data)
        assert leaves_equal(members.variables[0], members.variables[1]) is not differ


def test_member_masks_full_makes_every_member_the_full_mask():
    cfg = load_config(None, ['final.data="train+val"', "final.ensemble=3", 'final.member_masks="full"'])
    names = ["a", "b", "head"]
    full = mask_key({g: True for g in names})
    masks = retrained_member_masks(cfg, mask_from_key(full, names), {"011": 0.1})
    assert [mask_key(m) for m in masks] == [full, full, full]


def test_member_masks_full_needs_an_ensemble_on_train_and_val():
    with pytest.raises(UserError, match="final.member_masks = full needs"):
        load_config(None, ['final.member_masks="full"'])
    with pytest.raises(UserError, match="final.member_masks"):
        load_config(None, ['final.member_masks="some"'])


def test_the_trios_members_fill_three_full_fine_tunes_after_the_screen():
    cfg = load_config(None, ["final.epochs=8", "finetune.epochs=1"])
    trio = variant_config(cfg, "deft-trio")
    assert trio.final.epochs == 6  # (3 x 8 - 6 one-epoch screens) / 3 members
    assert variant_config(cfg, "deft-trio-full").final.epochs == 6  # the same recipe
    assert member_epochs(10, trio, 3.0) == 8  # floor((30 - 6) / 3)
    assert member_epochs(2, trio, 3.0) == 1  # never below one epoch


def test_deft_trio_screens_six_masks_for_one_epoch_then_trains_three_members_on_train_and_val(monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "3", "finetune.epochs": "1"})
    n_train = len(ctx.data.arrays.y_train)
    n = n_train + len(ctx.data.arrays.y_val)
    result = METHODS["deft-trio"].run(ctx)
    member = (3 * 3 - 6) // 3  # one epoch each after the six one-epoch screens
    assert calls == [(n_train, 1)] * 6 + [(n, member)] * 3
    members = result.extra["ensemble_members"]
    full = mask_key({g: True for g in ctx.spec.group_names})
    assert len(members) == 3 and members[1] == full and members[0] != full != members[2]
    assert result.val["n"] == 0 and result.fitness_evaluations == 6


def test_deft_trio_full_trains_three_full_members_with_no_screen(monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "3", "finetune.epochs": "1"})
    n = len(ctx.data.arrays.y_train) + len(ctx.data.arrays.y_val)
    result = METHODS["deft-trio-full"].run(ctx)
    assert calls == [(n, 1)] * 3 and result.fitness_evaluations == 0
    full = mask_key({g: True for g in ctx.spec.group_names})
    assert result.extra["ensemble_members"] == [full] * 3


def test_full_trainval_ensemble_trains_k_full_fine_tunes_on_train_and_val(monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "2", "final.keep": '"best-val"'})
    n = len(ctx.data.arrays.y_train) + len(ctx.data.arrays.y_val)
    result = METHODS["full-trainval-ensemble"].run(ctx)
    assert calls == [(n, 2)] * 3
    assert result.extra["member_seeds"] == [0, 1000, 2000] and result.extra["train_items"] == n
    assert result.val == {} and result.test["n"] == len(ctx.data.y_test)


def summary_of(means: dict[str, float], verdict: str = "better", x_epochs: float = 3.0) -> dict:
    return {"table": [{"method": m, "test_accuracy": {"mean": v}} for m, v in means.items()],
            "paired": {"deft-trio": [{"method": "full-ensemble", "verdict": verdict, "mean_difference": 0.02,
                                      "ci95": [0.01, 0.03], "ci95_bootstrap": [0.01, 0.03]}]},
            "cost": {"deft-trio": {"x_full_epochs": x_epochs}}}


def test_the_same_budget_goal_takes_the_best_reference_and_random_search_each_less_the_margin():
    means = {"full": 0.70, "full-ensemble": 0.74, "full-trainval-ensemble": 0.80, "random-search": 0.805,
             "deft-trio": 0.7955}
    g = same_budget_goal(summary_of(means), "deft-trio")
    assert g["best_reference"] == "full-trainval-ensemble" and g["within_best_reference"]
    assert g["within_random_search"] and g["resolved_better_than_full_ensemble"] and g["within_epoch_budget"]
    g = same_budget_goal(summary_of({**means, "deft-trio": 0.789}, "not resolved", 3.1), "deft-trio")
    assert not g["within_best_reference"] and not g["within_random_search"]
    assert not g["resolved_better_than_full_ensemble"] and not g["within_epoch_budget"]
    assert same_budget_goal(summary_of(means), "deft-default") == {}


def test_validation_folds_partition_the_validation_split_and_each_member_trains_on_everything_but_its_fold():
    from deft_jax.data.inputs import SplitArrays
    from deft_jax.methods.full_valfolds_ensemble import member_arrays, validation_folds

    y_val = np.repeat(np.arange(4), 7)  # 7 validation images per class
    arrays = SplitArrays(x_train=np.arange(20), y_train=np.arange(20) % 4,
                         x_val=100 + np.arange(y_val.size), y_val=y_val, num_classes=4)
    folds = validation_folds(arrays, 3, seed=5)
    assert np.array_equal(np.sort(np.concatenate(folds)), np.arange(y_val.size))
    for f in folds:  # stratified: every class 2 or 3 times in every fold
        assert set(np.bincount(y_val[f], minlength=4)) <= {2, 3}
    seen = set()
    for j, fold in enumerate(folds):
        member = member_arrays(arrays, folds, j)
        trained, held_out = set(member.x_train.tolist()), set(member.x_val.tolist())
        assert trained.isdisjoint(held_out) and held_out == set((100 + fold).tolist())
        assert set(range(20)) <= trained and len(trained) == 20 + y_val.size - fold.size
        assert np.array_equal(member.y_train, np.concatenate([arrays.y_train, y_val[np.setdiff1d(np.arange(28), fold)]]))
        seen |= trained
    assert seen == set(range(20)) | set((100 + np.arange(y_val.size)).tolist())


def test_validation_folds_need_as_many_validation_images_of_every_class_as_members():
    from deft_jax.data.inputs import SplitArrays
    from deft_jax.methods.full_valfolds_ensemble import validation_folds

    arrays = SplitArrays(x_train=np.arange(4), y_train=np.array([0, 1, 0, 1]), x_val=np.arange(5),
                         y_val=np.array([0, 0, 0, 1, 1]), num_classes=2)
    with pytest.raises(UserError, match="cannot hold out 3 folds"):
        validation_folds(arrays, 3, seed=0)


def test_full_valfolds_ensemble_trains_k_members_each_holding_out_one_fold_and_scores_validation_out_of_fold(monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "2", "data.source": '{"kind": "digits", "max_per_class": 20}'})
    n_train, n_val = len(ctx.data.arrays.y_train), len(ctx.data.arrays.y_val)
    result = METHODS["full-valfolds-ensemble"].run(ctx)
    sizes = result.extra["val_fold_sizes"]
    assert sum(sizes) == n_val and len(sizes) == 3
    assert calls == [(n_train + n_val - s, 2) for s in sizes]
    assert result.extra["member_seeds"] == [0, 1000, 2000]
    assert all(0 <= e < 2 for e in result.extra["member_epochs_kept"])
    assert result.val["n"] == n_val and result.test["n"] == len(ctx.data.y_test)
