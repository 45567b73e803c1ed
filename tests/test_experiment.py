"""The method comparison (deft_jax.experiment, deft_jax.methods) on a tiny synthetic case:
small CNN at 16 px on a few digits, 2 seeds."""

import copy
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from deft_jax.config.schema import config_from_dict, load_config
from deft_jax.cli.experiment import main
from deft_jax.experiment.plots import PLOTS
from deft_jax.experiment.records import RUNS, read_runs
from deft_jax.experiment.runner import run_experiment, seed_config
from deft_jax.experiment.summary import SUMMARY_JSON, SUMMARY_MD
from deft_jax.data.inputs import prepare_data
from deft_jax.config.schema import DEFAULT_EXPERIMENT_METHODS
from deft_jax.methods import MethodContext, ExperimentCache, run_order
from deft_jax.methods.auto_rgn import rgn_multipliers, scale_by_rgn
from deft_jax.core.metrics import roc_auc_ovr
from deft_jax.models import build_model

from helpers import logged, tiny_overrides

SEEDS = 2
# the paper's methods and the variant with every search option (learning-rate genes, final
# recipe fitness with halving, baseline seeding, the one-SE rule)
METHODS = list(DEFAULT_EXPERIMENT_METHODS) + ["deft-lr-mf"]


def tiny_experiment_config(**extra):
    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', "search.generations": "1",
            "final.epochs": "2", "final.keep": '"best-val"', "experiment.handpicked": '["conv4"]',
            "experiment.methods": json.dumps(METHODS), **extra}
    return load_config(None, tiny_overrides(**over))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "run"
    with logged() as lines:
        summary = run_experiment(tiny_experiment_config(), out, seeds=SEEDS)
    return out, summary, lines


def test_every_method_runs_end_to_end(finished):
    out, summary, _ = finished
    records = read_runs(out / RUNS)
    assert sorted((r["seed"], r["method"]) for r in records) == sorted(
        (s, m) for s in range(SEEDS) for m in METHODS)
    groups = build_model("small_cnn", 10, "none", 16).layer_groups
    by = {(r["seed"], r["method"]): r for r in records}
    for r in records:
        for split in ("test", "val"):
            # the scores are those of the split's own predictions: the confusion matrix
            # counts every item of the split (the same split for every method of a seed),
            # and the accuracy is its diagonal share
            cm = np.asarray(r[split]["confusion_matrix"])
            assert cm.sum() == r[split]["n"] == by[(r["seed"], "full")][split]["n"]
            assert r[split]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        if r["trained_groups"] is not None:  # the fraction of the groups it trained
            mask = {g: g in r["trained_groups"] for g in groups.names}
            assert r["trainable_fraction"] == pytest.approx(groups.fraction(mask))
    assert by[(0, "full")]["trainable_fraction"] == by[(0, "scratch")]["trainable_fraction"] == 1.0
    assert by[(0, "linear-probe")]["trained_groups"] == ["head"]
    assert by[(0, "handpicked")]["trained_groups"] == ["conv4", "head"]
    assert by[(0, "deft")]["history"] and by[(0, "deft")]["mask_key"]
    assert [r["method"] for r in summary["table"]] == run_order(list(METHODS))
    variant = by[(0, "deft-lr-mf")]
    assert variant["extra"]["selection"]["rule"] == "smallest-within-1se"
    assert any(h.get("promoted") for h in variant["history"]) and variant["extra"]["fitness_epochs"] > 0


def test_random_search_trains_as_many_distinct_masks_as_deft_on_each_seed(finished):
    records = read_runs(finished[0] / RUNS)
    for s in range(SEEDS):
        deft = next(r for r in records if r["seed"] == s and r["method"] == "deft")
        rand = next(r for r in records if r["seed"] == s and r["method"] == "random-search")
        assert deft["fitness_evaluations"] == deft["history"][-1]["distinct_masks_so_far"] > 0
        assert rand["fitness_evaluations"] == deft["fitness_evaluations"] == rand["extra"]["budget"]
        assert rand["extra"]["budget_source"].startswith("deft")


def test_every_record_stores_which_test_items_it_got_right_and_which_test_split_it_used(finished):
    from deft_jax.core.metrics import bits_correct
    out, summary, _ = finished
    for r in read_runs(out / RUNS):
        correct = bits_correct(r["test"]["correct_bits"], r["split_sizes"]["test"])
        assert correct.mean() == pytest.approx(r["test"]["accuracy"])
        assert r["test_sha"] and r["test_from_dataset"] is False  # digits: splits made here
    assert summary["paired_test"] == "repeated splits"


def test_splits_are_shared_by_the_methods_of_a_seed_and_differ_between_seeds(finished):
    records = read_runs(finished[0] / RUNS)
    shas = {s: {r["split_sha"] for r in records if r["seed"] == s} for s in range(SEEDS)}
    assert all(len(v) == 1 for v in shas.values())
    assert shas[0] != shas[1]
    split0 = json.loads((finished[0] / "splits" / "seed0.json").read_text())
    split1 = json.loads((finished[0] / "splits" / "seed1.json").read_text())
    assert split0["test"] != split1["test"] and (split0["seed"], split1["seed"]) == (0, 1)


def test_summary_and_the_three_plots_are_written(finished):
    out, summary, lines = finished
    text = (out / SUMMARY_MD).read_text()
    assert "| deft |" in text and "deft-lr-mf against each method" in text and "corrected" in text
    saved = json.loads((out / SUMMARY_JSON).read_text())
    assert {r["method"] for r in saved["paired"]["deft"]} == set(METHODS) - {"deft", "deft-lr-mf"}
    assert {r["method"] for r in saved["paired"]["deft-lr-mf"]} == set(METHODS) - {"deft-lr-mf"}
    assert all(r["n"] == SEEDS and r["verdict"] in ("better", "worse", "not resolved")
               for rows in saved["paired"].values() for r in rows)
    assert {r["method"] for r in saved["search_honesty"]} == {"deft", "deft-lr-mf", "random-search"}
    assert saved["cost"]["full"]["x_full"] == 1.0
    for name in PLOTS:
        with Image.open(out / name) as im:
            assert im.size == (600, 400)
    assert (out / "runs.csv").read_text().count("\n") == 1 + SEEDS * len(METHODS)
    assert any(line.startswith("seed 2/2 method deft ... test acc") for line in lines)


def test_resume_skips_finished_pairs_and_runs_only_the_missing_ones(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    records = (out / RUNS).read_text().splitlines()
    dropped = json.loads(records[-1])
    (out / RUNS).write_text("\n".join(records[:-1]) + "\n")
    cfg = config_from_dict(json.loads((out / "config.json").read_text()))  # as main() does
    with logged() as lines:
        run_experiment(cfg, out, resume=True)
    started = [line for line in lines if line.endswith("...")]
    assert started == [f"seed {dropped['seed'] + 1}/{SEEDS} method {dropped['method']} ..."]
    assert len(read_runs(out / RUNS)) == len(records)
    with logged() as lines:
        run_experiment(cfg, out, resume=True)  # nothing left to do
    assert not [line for line in lines if line.endswith("...")]


def test_rgn_multipliers_lie_in_the_unit_interval_with_maximum_exactly_one():
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": rng.normal(size=(3, 3, 4, 8)), "bias": np.zeros(8)},
              "b": {"kernel": rng.normal(size=(8, 2)) * 5, "scale": np.ones(2)}}
    grads = jax.tree.map(lambda p: rng.normal(size=np.shape(p)) * rng.uniform(0.01, 3), params)
    params, grads = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads)
    m = jax.tree.leaves(rgn_multipliers(grads, params))
    assert all(0.0 <= float(x) <= 1.0 for x in m) and max(float(x) for x in m) == 1.0
    m_jit = jax.tree.leaves(jax.jit(rgn_multipliers)(grads, params))
    assert max(float(x) for x in m_jit) == 1.0
    # a zero-norm tensor (fresh zero bias) gets 1 and does not flatten the others
    flat = rgn_multipliers(grads, params)
    assert float(flat["a"]["bias"]) == 1.0 and 0 < min(float(x) for x in jax.tree.leaves(flat))
    # real gradients of a model
    spec = build_model("small_cnn", 3, "none", 16)
    v = spec.init(0)
    x = jnp.asarray(rng.normal(size=(8, 16, 16, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 8))

    def loss(p):
        logits, _ = spec.net.apply({"params": p, "batch_stats": v["batch_stats"]}, x, train=True,
                                   mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    m = jax.tree.leaves(rgn_multipliers(jax.grad(loss)(v["params"]), v["params"]))
    assert all(0.0 <= float(x) <= 1.0 for x in m) and max(float(x) for x in m) == 1.0


def test_rgn_scaling_multiplies_each_tensors_update_by_its_multiplier():
    """scale_by_rgn(sgd(0.1)): at the first step (a refresh) the update of each tensor is
    -0.1 * g * its RGN multiplier; the multipliers travel in the optimizer state."""
    tx = scale_by_rgn(optax.sgd(0.1), steps_per_epoch=3)
    params = {"w": jnp.ones(3), "b": jnp.full(2, 2.0)}
    grads = {"w": jnp.full(3, 1.0), "b": jnp.full(2, 1.0)}
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    m = rgn_multipliers(grads, params)  # w: ||g||/||w|| = 1 (max), b: 0.5
    np.testing.assert_allclose(float(m["w"]), 1.0)
    np.testing.assert_allclose(float(m["b"]), 0.5)
    np.testing.assert_allclose(updates["w"], -0.1)
    np.testing.assert_allclose(updates["b"], -0.05)
    assert float(state.multipliers["b"]) == float(m["b"]) and int(state.count) == 1


def test_roc_auc_ovr_handles_ties_and_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score
    assert roc_auc_ovr([0, 1, 0, 1], np.full((4, 2), 0.5)) == 0.5  # all tied: chance
    assert roc_auc_ovr([0, 0, 1], [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]) == 1.0
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = np.r_[0, 1, 2, rng.integers(0, 3, 27)]
        p = np.round(rng.dirichlet(np.ones(3), 30), 1)  # coarse: many ties
        p = p / p.sum(1, keepdims=True)
        assert abs(roc_auc_ovr(y, p) - roc_auc_score(y, p, multi_class="ovr")) < 1e-12
    # a class absent from the labels has no AUC: the mean is over the others
    assert np.isfinite(roc_auc_ovr([0, 1, 0, 1], rng.dirichlet(np.ones(3), 4), 3))


def test_run_order_puts_random_search_after_deft():
    assert run_order(["random-search", "full", "deft"]) == ["deft", "random-search", "full"]
    assert run_order(["random-search", "full"]) == ["random-search", "full"]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "deft,nope"], "unknown method 'nope'"),
    (["--set", 'experiment.handpicked=["conv9"]', "--methods", "handpicked"], "unknown layer group(s) conv9"),
    (["--set", "experiment.handpicked=[]", "--methods", "handpicked"], "experiment.handpicked is empty"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--set", 'experiment.folds="kfold"'], "experiment.folds must be repeated"),
])
def test_bad_input_gives_a_one_line_error(argv, message, tmp_path, capsys):
    base = ["--out", str(tmp_path / "x")] + [a for o in tiny_overrides() for a in ("--set", o)]
    with pytest.raises(SystemExit) as exit_info:
        main(base + argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_resume_of_a_folder_that_is_not_an_experiment_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path)])
    assert "not an experiment folder" in capsys.readouterr().err


def test_auto_rgn_with_unit_multipliers_is_the_full_fine_tune(monkeypatch):
    """Auto-RGN = the shared recipe on every group, updates scaled per tensor: with all
    multipliers 1 it must train exactly like `full`."""
    from deft_jax.methods import auto_rgn, full

    cfg = seed_config(tiny_experiment_config(), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    data = prepare_data(cfg, spec)
    ctx = MethodContext(cfg=cfg, data=data, spec=spec, variables=spec.init(cfg.seed), seed=0,
                        programs=ExperimentCache())
    monkeypatch.setattr(auto_rgn, "rgn_multipliers",
                        lambda grads, params, head=None: jax.tree.map(lambda _: jnp.float32(1.0), params))
    ours, reference = auto_rgn.run(ctx), full.run(ctx)
    assert ours.trainable_fraction == reference.trainable_fraction == 1.0
    np.testing.assert_allclose(ours.extra["final_loss_first_last"],
                               reference.extra["final_loss_first_last"], rtol=1e-4)
    assert ours.test["confusion_matrix"] == reference.test["confusion_matrix"]


def test_the_final_learning_rate_is_the_grid_rate_with_the_best_validation_score():
    from deft_jax.experiment.summary import learning_rates_chosen
    from deft_jax.methods import full

    grid = [0.001, 0.05, 0.5]
    cfg = seed_config(tiny_experiment_config(**{"experiment.learning_rates": json.dumps(grid)}), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    data = prepare_data(cfg, spec)

    def run(config):
        ctx = MethodContext(cfg=config, data=data, spec=spec, variables=spec.init(config.seed), seed=0,
                            programs=ExperimentCache())
        return full.run(ctx)

    tuned = run(cfg)
    scores = tuned.extra["learning_rate_val_scores"]
    assert list(scores) == [str(lr) for lr in grid]
    best = max(grid, key=lambda lr: (scores[str(lr)], -grid.index(lr)))  # first of the grid on ties
    assert tuned.extra["learning_rate"] == best and tuned.val["accuracy"] == scores[str(best)]
    assert len(set(scores.values())) > 1  # the grid made a difference here
    alone = copy.deepcopy(cfg)
    alone.experiment.learning_rates = []
    alone.final.learning_rate = best
    reference = run(alone)
    assert tuned.test["confusion_matrix"] == reference.test["confusion_matrix"]
    assert "learning_rate" not in reference.extra
    records = {"full": [{"extra": {"learning_rate": 0.05}}, {"extra": {"learning_rate": 0.5}},
                        {"extra": {"learning_rate": 0.05}}], "linear-probe": [{"extra": {}}]}
    assert learning_rates_chosen(records, ["full", "linear-probe"]) == {"full": {"0.05": 2, "0.5": 1}}
