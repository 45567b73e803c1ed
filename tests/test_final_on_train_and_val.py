"""`final.data = "train+val"`: the final model trains on every labelled image, the search
still ranks masks on validation, and the run says that no validation split was held out;
`deft-trainval`, the DEFT built on it."""

from __future__ import annotations

import json

import pytest
from helpers import digits_method_context, logged, static_fine_tunes, tiny_overrides

from deft_jax.cli.search import main as search_main
from deft_jax.config.schema import load_config
from deft_jax.core.ensemble import retrained_member_masks
from deft_jax.core.masks import mask_from_key, mask_key
from deft_jax.data.splits import load_splits
from deft_jax.errors import UserError
from deft_jax.experiment.summary import search_honesty
from deft_jax.methods import METHODS
from deft_jax.methods.deft import VARIANTS, variant_config
from deft_jax.run.predictor import Predictor
from deft_jax.runtime import rundir


def test_the_search_command_trains_its_final_model_on_train_and_val_and_reports_no_held_out_validation(
        tmp_path, monkeypatch):
    calls = static_fine_tunes(monkeypatch)  # vmap-1 fitness: only the final training is static
    run = tmp_path / "run"
    over = {"final.data": '"train+val"', "final.keep": '"best-val"', "search.generations": "0",
            "search.evaluation": '"vmap-1"'}
    assert search_main(["--out", str(run), "--set", *tiny_overrides(**over)]) == 0
    splits = load_splits(run / rundir.SPLITS)
    n = len(splits["train"]) + len(splits["val"])
    assert calls == [(n, 2)]  # train+val, final.epochs
    metrics = json.loads((run / rundir.METRICS).read_text())
    assert metrics["val"]["n"] == 0 and metrics["val"]["held_out"] is False
    assert metrics["final_trained_on"] == {"data": "train+val", "train_items": n, "epochs": 2, "models": 1}
    assert metrics["final_keep"] == "last" and metrics["final_epoch_kept"] == 1  # 0-based: the last
    assert metrics["fine_tune_epochs"] == 4 * 1 + 2  # 4 one-epoch members, then the final 2
    report = (run / rundir.REPORT).read_text()
    assert "none held out: trained on train+val" in report and "the final model trained on train+val" in report
    assert "none held out" in (run / rundir.REPORT_HTML).read_text()


def test_an_ensemble_on_train_and_val_trains_the_selected_and_the_full_mask_again_and_predict_averages_them(
        tmp_path, monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    run = tmp_path / "run"
    over = {"final.data": '"train+val"', "final.reuse": "true", "final.ensemble": "2", "search.generations": "0",
            "search.schedule": '"final"', "search.evaluation": '"sequential"', "search.seed_baselines": "true"}
    with logged() as messages:
        assert search_main(["--out", str(run), "--set", *tiny_overrides(**over)]) == 0
    assert any("not reused with final.data = train+val" in m for m in messages)
    metrics = json.loads((run / rundir.METRICS).read_text())
    splits = load_splits(run / rundir.SPLITS)
    n = len(splits["train"]) + len(splits["val"])
    assert calls[-2:] == [(n, 2), (n, 2)]  # both members trained again on train+val
    record = metrics["final_model"]
    assert record["source"] == "trained" and record["ensemble"] == 2
    best = rundir.read_json(run / rundir.BEST)["mask"]
    assert record["masks"][0] == best and all(record["masks"][1].values()) != all(best.values())
    predictor = Predictor(run)
    assert len(predictor.members) == 2 and predictor.ensemble_masks == record["masks"]
    assert "ensemble of 2 models trained after the search" in (run / rundir.REPORT).read_text()


def test_the_retrained_ensemble_holds_the_selected_mask_then_the_full_mask_then_the_best_others():
    cfg = load_config(None, ["final.ensemble=3"])
    names = ["a", "b", "head"]
    full = mask_key({g: True for g in names})
    fitness = {"001": 0.2, "011": 0.1, full: 0.5, "101": 0.3}
    masks = retrained_member_masks(cfg, mask_from_key("011", names), fitness)
    assert [mask_key(m) for m in masks] == ["011", full, "001"]
    masks = retrained_member_masks(cfg, mask_from_key(full, names), fitness)  # the full mask selected
    assert [mask_key(m) for m in masks] == [full, "011", "001"]


def test_a_final_model_on_train_and_val_refuses_a_learning_rate_grid_and_unknown_data_values():
    with pytest.raises(UserError, match="final.data = train"):
        load_config(None, ['final.data="train+val"', "experiment.learning_rates=[0.01, 0.1]"])
    with pytest.raises(UserError, match="final.data"):
        load_config(None, ['final.data="everything"'])
    assert load_config(None, []).final.data == "train"


def test_deft_trainval_is_the_declared_deft_screened_by_one_epoch_with_its_winner_trained_on_train_and_val():
    default, trainval = VARIANTS["deft-default"], VARIANTS["deft-trainval"]
    changed = {k for k in set(default) | set(trainval) if default.get(k) != trainval.get(k)}
    assert changed == {"schedule", "fidelity", "final.reuse", "final.ensemble", "final.data"}
    cfg = variant_config(load_config(None, []), "deft-trainval")
    assert (cfg.search.schedule, cfg.search.fidelity, cfg.final.data) == ("short", "full", "train+val")
    assert cfg.search.select == "full-unless-1se-better" and cfg.search.start == "probe"


def test_the_experiments_deft_trainval_trains_one_final_model_on_train_and_val_and_reports_no_validation(
        monkeypatch):
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "2", "finetune.epochs": "1", "final.keep": '"best-val"'})
    data = ctx.data
    result = METHODS["deft-trainval"].run(ctx)
    n = len(data.arrays.y_train) + len(data.arrays.y_val)
    assert calls[-1] == (n, 2)  # the one final training: train+val, final.epochs
    assert all(c == (len(data.arrays.y_train), 1) for c in calls[:-1])  # the one-epoch screens
    assert result.val["n"] == 0 and result.extra["final_trained_on"]["train_items"] == n
    assert result.extra["final_reused"] is False
    record = {"method": "deft-trainval", "val": result.val, "test": result.test, "extra": result.extra}
    [row] = search_honesty({"deft-trainval": [record]}, ["deft-trainval"])
    assert row["final_val_accuracy"]["n"] == 0 and row["test"]["n"] == 1


def test_deft_trainval_pair_is_deft_trainval_with_two_models_at_three_times_full_epochs(monkeypatch):
    assert {k: v for k, v in VARIANTS["deft-trainval-pair"].items() if k != "final.ensemble"} \
        == {k: v for k, v in VARIANTS["deft-trainval"].items() if k != "final.ensemble"}
    calls = static_fine_tunes(monkeypatch)
    ctx = digits_method_context(**{"final.epochs": "2", "finetune.epochs": "1"})
    data = ctx.data
    result = METHODS["deft-trainval-pair"].run(ctx)
    n = len(data.arrays.y_train) + len(data.arrays.y_val)
    assert calls[-2:] == [(n, 2), (n, 2)] and len(calls) == 8 + 2  # its 8 one-epoch screens, 2 final models
    assert len(result.extra["ensemble_members"]) == 2 and result.val["n"] == 0
