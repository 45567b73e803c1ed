"""k-fold fitness over train+val (`search.folds`): the folds, the folded evaluator, the final
model trained on train+val, and the config's checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import digits_method_context, logged, small_cnn_problem, static_fine_tunes, tiny_config, tiny_overrides

from deft_jax.cli.search import main as search_main
from deft_jax.config.presets import DECLARED_DEFT
from deft_jax.config.schema import load_config
from deft_jax.core.masks import mask_from_names
from deft_jax.data.folds import Folds, check_folds, stratified_folds
from deft_jax.data.inputs import SplitArrays
from deft_jax.data.splits import load_splits
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.choice import build_evaluator, make_evaluator
from deft_jax.evolution.evaluators.folds import FoldedEvaluator
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.final_inputs import rounded_mean
from deft_jax.methods import METHODS
from deft_jax.methods.deft import VARIANTS, variant_config
from deft_jax.runtime import rundir


def test_folds_hold_every_item_once_balance_each_class_within_one_and_repeat_with_the_seed():
    labels = np.repeat([0, 1, 2], [7, 11, 4])
    folds = stratified_folds(labels, 3, seed=5)
    together = np.sort(np.concatenate(folds))
    assert np.array_equal(together, np.arange(labels.size))  # each item in exactly one fold
    for c in range(3):
        counts = [int(np.sum(labels[f] == c)) for f in folds]
        assert max(counts) - min(counts) <= 1, (c, counts)
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    again = stratified_folds(labels, 3, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    other = stratified_folds(labels, 3, seed=6)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other))


def test_grouped_folds_keep_every_group_in_one_fold():
    labels = np.repeat([0, 1], 12)
    groups = np.asarray([f"g{i // 2}" for i in range(24)])  # pairs of images share a group
    folds = stratified_folds(labels, 3, seed=0, groups=groups)
    fold_of = {g: {i for i, f in enumerate(folds) if np.isin(np.flatnonzero(groups == g), f).any()}
               for g in set(groups)}
    assert all(len(where) == 1 for where in fold_of.values())


def test_too_few_images_of_a_class_for_the_folds_is_a_one_line_user_error():
    with pytest.raises(UserError) as err:
        check_folds(np.asarray([0, 0, 0, 1, 1]), 3, class_names=["cat", "dog"])
    assert "search.folds = 3" in str(err.value) and "'dog' has 2" in str(err.value)
    assert "\n" not in str(err.value)
    check_folds(np.asarray([0, 0, 0, 1, 1, 1]), 3)  # enough


def test_a_search_on_too_small_a_dataset_for_its_folds_fails_in_one_line_before_any_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        search_main(["--out", str(out), "--set", *tiny_overrides(**{"search.folds": "13"})])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: search.folds = 13 needs at least 13 images of every class")
    assert "\n" not in err and not out.exists()


def test_the_folds_option_is_bounded_and_refuses_a_learning_rate_grid():
    with pytest.raises(UserError, match="search.folds must be an integer"):
        tiny_config(**{"search.folds": "0"})
    with pytest.raises(UserError, match="experiment.learning_rates"):
        tiny_config(**{"search.folds": "2", "experiment.learning_rates": "[0.01, 0.1]"})
    assert tiny_config().search.folds == 1


def small_problem():
    spec, variables, data, ft = small_cnn_problem(epochs=2)
    recipe = FitnessRecipe(ft, metric="accuracy", keep="best-val", seed=1)
    groups = spec.group_names
    masks = [mask_from_names(groups[-1:], groups), mask_from_names(groups[-2:], groups)]
    return spec, variables, data, recipe, masks


def test_a_two_fold_evaluator_scores_the_mean_of_two_evaluators_built_by_hand_on_the_same_folds():
    spec, variables, data, recipe, masks = small_problem()
    folds = Folds.of(data, 2, seed=4)
    folded = FoldedEvaluator(folds, [build_evaluator("sequential", spec, variables, folds.split(f), recipe)
                                     for f in range(2)], whole_epochs=2)
    scored, done = [], []
    folded.on_member_scored = lambda i, value: scored.append((i, value))
    folded.on_member_done = done.append
    got = folded.evaluate(masks)
    by_hand = [build_evaluator("sequential", spec, variables, folds.split(f), recipe).evaluate(masks)
               for f in range(2)]
    assert got == [(a + b) / 2 for a, b in zip(*by_hand)]  # exactly
    assert sorted(scored) == list(enumerate(got)) and sum(done) == len(masks)
    # fold f validates on fold f's items, trained on the other fold's
    assert np.array_equal(folds.split(0).y_val, folds.y[folds.folds[0]])
    assert len(folds.split(0).y_train) == len(folds.folds[1])
    epochs, logits = folded.record(masks[0])
    assert all(0 <= e < 2 for e in epochs) and logits.shape == (len(data.y_train) + len(data.y_val), 3)
    # the out-of-fold logits the search kept are those evaluate_logits gives, in train+val order
    assert np.array_equal(folded.evaluate_logits(masks[:1])[0], logits)
    fresh = FoldedEvaluator(folds, [build_evaluator("sequential", spec, variables, folds.split(f), recipe)
                                    for f in range(2)], whole_epochs=2)
    assert fresh.record(masks[0])[0] == epochs  # not kept (a resumed search): fine-tuned again


def test_with_one_fold_the_evaluator_and_its_fitness_are_todays():
    spec, variables, data, recipe, masks = small_problem()
    cfg = tiny_config(**{"search.evaluation": '"sequential"', "finetune.epochs": "2", "finetune.batch_size": "16",
                         "finetune.learning_rate": "0.1", "finetune.weight_decay": "0.01", "seed": "1"})
    evaluator, mode, _ = make_evaluator(cfg, spec, variables, data)
    assert not isinstance(evaluator, FoldedEvaluator) and mode == "sequential"
    today = build_evaluator("sequential", spec, variables, data, FitnessRecipe(cfg.finetune, seed=1))
    assert evaluator.evaluate(masks) == today.evaluate(masks)


def test_the_out_of_fold_logits_come_in_train_then_val_order():
    spec, variables, data, recipe, masks = small_problem()
    folds = Folds.of(SplitArrays(data.x_train[:40], data.y_train[:40], data.x_val[:20], data.y_val[:20], 3), 2, 0)
    assert np.array_equal(folds.y, np.concatenate([data.y_train[:40], data.y_val[:20]]))
    assert np.array_equal(np.asarray(folds.x[folds.folds[1]]), np.asarray(folds.split(1).x_val))


def split_sizes(run) -> tuple[int, int]:
    splits = load_splits(run / rundir.SPLITS)
    return len(splits["train"]), len(splits["val"])


def test_a_two_fold_search_trains_its_winner_on_train_and_val_and_reports_out_of_fold_validation(tmp_path, monkeypatch):
    calls = static_fine_tunes(monkeypatch)  # vmap-1 fitness: only the final training is static
    run = tmp_path / "run"
    assert search_main(["--out", str(run), "--set", *tiny_overrides(**{
        "search.folds": "2", "search.generations": "0", "search.evaluation": '"vmap-1"'})]) == 0
    n_train, n_val = split_sizes(run)
    assert calls == [(n_train + n_val, 2)]  # train+val, final.epochs (a short fitness)
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["val"]["out_of_fold"] is True and metrics["val"]["n"] == n_train + n_val
    assert metrics["folds"] == {"k": 2, "train_items": n_train + n_val, "fold_kept_epochs": [1, 1],
                                "epochs": 2, "epochs_from": "final.epochs"}
    assert metrics["search"]["folds"] == 2
    history = [json.loads(line) for line in (run / rundir.HISTORY).read_text().splitlines()]
    assert history[0]["epochs_trained"] == 4 * 1 * 2  # 4 members, 1 epoch, 2 folds
    assert metrics["fine_tune_epochs"] == 4 * 1 * 2 + 2  # and the final training's 2
    assert "val (out-of-fold)" in (run / rundir.REPORT).read_text()


def test_with_best_val_and_the_final_recipe_the_folds_choose_the_winners_epochs_and_reuse_is_not_used(
        tmp_path, monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    run = tmp_path / "run"
    extra = {"search.folds": "2", "search.generations": "0", "search.schedule": '"final"',
             "search.fidelity": '"halving"', "search.evaluation": '"sequential"', "final.keep": '"best-val"',
             "final.epochs": "3", "final.reuse": "true", "final.ensemble": "2"}
    with logged() as messages:
        assert search_main(["--out", str(run), "--set", *tiny_overrides(**extra)]) == 0
    assert any("final.reuse / final.ensemble are not used with search.folds" in m for m in messages)
    n_train, n_val = split_sizes(run)
    metrics = json.loads((run / rundir.METRICS).read_text())
    folds = metrics["folds"]
    assert folds["epochs_from"] == "folds" and folds["epochs"] == rounded_mean(folds["fold_kept_epochs"])
    assert calls[-1] == (n_train + n_val, folds["epochs"])  # the final training: train+val, the folds' epochs
    assert metrics["final_epochs"] == folds["epochs"] and metrics["final_keep"] == "last"
    assert metrics["final_model"]["source"] == "trained" and metrics["val"]["out_of_fold"] is True


def test_the_rounded_mean_of_epoch_counts_rounds_half_up():
    assert rounded_mean([2, 3]) == 3 and rounded_mean([1, 1, 2]) == 1 and rounded_mean([4]) == 4


def test_the_deft_folds_variant_is_the_declared_deft_with_three_folds_and_no_reused_models():
    cfg = variant_config(load_config(None, []), "deft-folds")
    assert cfg.search.folds == 3 and not cfg.final.reuse and cfg.final.ensemble == 1
    default = variant_config(load_config(None, []), "deft-default")
    changed = ("folds", "final.reuse", "final.ensemble")
    assert {k: v for k, v in VARIANTS["deft-folds"].items() if k not in changed} \
        == {k: v for k, v in VARIANTS["deft-default"].items() if k not in changed}
    assert all(getattr(cfg.search, k) == getattr(default.search, k) for k in ("schedule", "fidelity", "select", "start"))
    assert default.search.folds == 1 and DECLARED_DEFT["final.reuse"] is True and "search.folds" not in DECLARED_DEFT


def test_the_experiments_deft_with_folds_reports_out_of_fold_validation_and_a_final_model_on_train_and_val(
        monkeypatch):
    calls = static_fine_tunes(monkeypatch)  # vmap-1 fitness: only the final training is static
    ctx = digits_method_context(**{"final.epochs": "2", "finetune.epochs": "1", "final.keep": '"best-val"',
                                   "search.folds": "2", "search.generations": "0", "search.schedule": '"final"',
                                   "search.evaluation": '"vmap-1"'})
    data = ctx.data
    result = METHODS["deft"].run(ctx)  # the search of every deft variant, deft-folds' included
    n = len(data.arrays.y_train) + len(data.arrays.y_val)
    assert result.val["out_of_fold"] is True and result.val["n"] == n
    assert result.extra["final_reused"] is False and result.extra["folds"]["k"] == 2
    assert result.extra["folds"]["epochs_from"] == "folds" and calls == [(n, result.extra["folds"]["epochs"])]


def test_full_trainval_fine_tunes_every_group_on_train_and_val_for_the_final_epochs(monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "2", "final.keep": '"best-val"'})
    data = ctx.data
    result = METHODS["full-trainval"].run(ctx)
    n = len(data.arrays.y_train) + len(data.arrays.y_val)
    assert calls == [(n, 2)] and result.extra["train_items"] == n and result.val == {}
    assert result.trainable_fraction == 1.0 and result.test["n"] == len(data.y_test)
    with pytest.raises(UserError, match="full-trainval"):
        METHODS["full-trainval"].check_config(load_config(None, ["experiment.learning_rates=[0.01, 0.1]"]))
