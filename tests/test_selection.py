"""Selection options of issue 23: the validation log-loss as the search metric
(`search.metric = "nll"`), the probed head as every fine-tune's start (`search.start =
"probe"`), the fine-tune epochs every method ran (`summary.json`), and ensembles of the
promoted members (`final.ensemble`)."""

from __future__ import annotations


import jax
import numpy as np
import pytest

from deft_jax.core.final import train_final
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import mask_from_key, mask_from_names
from deft_jax.data.inputs import prepare_data
from deft_jax.evolution.evaluators.choice import build_evaluator
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.fitness import MemoTable, evaluate_population
from deft_jax.evolution.selection import select_mask
from deft_jax.experiment.runner import seed_config
from deft_jax.methods import ExperimentCache, MethodContext, full
from deft_jax.models import build_model
from deft_jax.models.groups import LayerGroups

from helpers import small_cnn_problem, tiny_config, tiny_overrides


def independent_log_loss(logits, labels) -> float:
    """Mean cross-entropy, written out: -log(exp(z_y) / sum_c exp(z_c)) per item, float64."""
    z = np.asarray(logits, np.float64)
    return float(np.mean([np.log(np.sum(np.exp(row))) - row[y] for row, y in zip(z, labels)]))


# --- search.metric = "nll" ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sequential", "vmap-1"])
def test_with_metric_nll_a_members_fitness_is_one_plus_its_validation_log_loss(mode):
    spec, variables, data, cfg = small_cnn_problem(epochs=2)
    masks = [mask_from_names(names, spec.group_names) for names in (["conv4"], ["conv2", "conv3"], [])]
    evaluator = build_evaluator(mode, spec, variables, data, FitnessRecipe(cfg, metric="nll"))
    fitness = evaluator.evaluate(masks)
    tuner = FineTuner(spec, cfg)
    for mask, value in zip(masks, fitness):
        trained, _ = tuner.fine_tune(variables, mask, data.x_train, data.y_train, seed=0)
        loss = independent_log_loss(tuner.logits(trained, data.x_val), data.y_val)
        # fitness = 1 - metric, the metric being minus the log-loss (higher is better)
        assert value == pytest.approx(1.0 + loss, abs=1e-4)
    assert len(set(np.round(fitness, 4))) > 1  # the masks are told apart
    accuracy = build_evaluator(mode, spec, variables, data, FitnessRecipe(cfg)).evaluate(masks[:1])[0]
    assert 0.0 <= accuracy <= 1.0 and accuracy != pytest.approx(fitness[0])


def test_with_metric_nll_the_best_val_epoch_is_the_one_with_the_lowest_validation_log_loss():
    cfg = tiny_config(**{"search.metric": '"nll"', "final.keep": '"best-val"', "final.epochs": "4",
                         "finetune.learning_rate": "0.2"})
    spec = build_model("small_cnn", 10, "none", 16)
    data = prepare_data(cfg, spec)
    variables = spec.init(cfg.seed)
    mask = mask_from_names(["conv3", "conv4"], spec.group_names)
    final = train_final(cfg, spec, variables, mask, data)
    tuner = FineTuner(spec, cfg.finetune, epochs=4)
    per_epoch = []
    tuner.fine_tune(variables, mask, data.arrays.x_train, data.arrays.y_train, seed=cfg.seed,
                    after_epoch=lambda e, v: per_epoch.append(
                        independent_log_loss(tuner.logits(v, data.arrays.x_val), data.arrays.y_val)))
    assert len(set(np.round(per_epoch, 5))) > 1
    assert final.epoch_kept == int(np.argmin(per_epoch))
    assert independent_log_loss(final.val_logits, data.arrays.y_val) == pytest.approx(min(per_epoch), abs=1e-4)


def test_with_metric_nll_the_final_learning_rate_is_the_grid_rate_with_the_lowest_validation_log_loss():
    grid = [0.001, 0.05, 0.5]
    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', "search.metric": '"nll"',
            "experiment.learning_rates": str(grid)}
    from deft_jax.config.schema import load_config
    cfg = seed_config(load_config(None, tiny_overrides(**over)), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    ctx = MethodContext(cfg=cfg, data=prepare_data(cfg, spec), spec=spec, variables=spec.init(cfg.seed),
                        seed=0, programs=ExperimentCache())
    result = full.run(ctx)
    scores = result.extra["learning_rate_val_scores"]
    assert result.val["log_loss"] == pytest.approx(-scores[str(result.extra["learning_rate"])])
    assert result.extra["learning_rate"] == max(grid, key=lambda lr: scores[str(lr)])
    assert "accuracy" in result.val and "accuracy" in result.test  # still reported


GROUPS = ("g0", "g1", "head")
LAYER_GROUPS = LayerGroups({"params": {g: {"w": np.zeros(10)} for g in GROUPS}},
                           tuple((rf"^{g}/", g) for g in GROUPS), GROUPS)


class Constant:
    def __init__(self, value):
        self.value = value

    def evaluate(self, masks, epochs=None):
        return [self.value] * len(masks)


def test_with_metric_nll_an_infeasible_or_diverged_mask_scores_worse_than_any_trained_one():
    from deft_jax.core import divergence

    worst = divergence.worst_fitness("nll")
    assert divergence.worst_fitness("accuracy") == 1.0
    nan = np.full((4, 3), np.nan)
    assert divergence.fitness_from_logits("nll", nan, np.zeros(4, int), 3) == worst
    huge = np.array([[0.0, 1e6, 0.0]] * 4)  # confidently wrong: a mean log-loss of 1e6 is capped
    assert divergence.fitness_from_logits("nll", huge, np.zeros(4, int), 3) == worst
    fitness, info = evaluate_population(Constant(3.5), [mask_from_key(k, GROUPS) for k in ("001", "111")],
                                        MemoTable(), LAYER_GROUPS, max_fraction=0.5, worst=worst)
    assert info["infeasible"] == 1 and fitness[0] == 3.5 and fitness[1] > worst


def test_with_metric_nll_the_one_se_rule_uses_the_log_loss_standard_error():
    memo = MemoTable({"111": 1.50, "011": 1.55, "001": 1.70})  # log-losses 0.5, 0.55, 0.7
    key, how = select_mask(memo, LAYER_GROUPS, "smallest-within-1se", n_val=100, metric="nll")
    assert how["standard_error"] == pytest.approx(0.5 / 10)  # 0.05: 1.55 is within, 1.70 is not
    assert key == "011"


# --- search.start = "probe" --------------------------------------------------------------------


def method_context(**extra):
    from deft_jax.config.schema import load_config
    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', "search.generations": "1",
            "search.population_size": "4", "final.epochs": "2", **extra}
    cfg = seed_config(load_config(None, tiny_overrides(**over)), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    return MethodContext(cfg=cfg, data=prepare_data(cfg, spec), spec=spec, variables=spec.init(cfg.seed),
                         seed=0, programs=ExperimentCache())


def recorded_starts(monkeypatch, run, ctx):
    """The variables every evaluator (each candidate's fine-tune) and every final training of
    `run(ctx)` started from."""
    from deft_jax.methods import common, deft

    starts = {"evaluator": [], "final": []}
    real_evaluator, real_final = deft.make_evaluator, common.train_final

    def make_evaluator(cfg, spec, variables, data):
        starts["evaluator"].append(variables)
        return real_evaluator(cfg, spec, variables, data)

    def train_final(cfg, spec, variables, mask, data, tuner=None):
        starts["final"].append(variables)
        return real_final(cfg, spec, variables, mask, data, tuner=tuner)

    monkeypatch.setattr(deft, "make_evaluator", make_evaluator)
    monkeypatch.setattr(common, "train_final", train_final)
    return run(ctx), starts


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


@pytest.mark.parametrize("method", ["deft", "random-search"])
def test_with_start_probe_every_candidate_and_the_final_training_start_from_the_probed_head(monkeypatch, method):
    from deft_jax.core.probe import fit_head
    from deft_jax.methods import get_method

    ctx = method_context(**{"search.start": '"probe"', "search.evaluation": '"vmap-1"'})
    a = ctx.data.arrays
    probe = fit_head(ctx.spec, ctx.variables, a.x_train, a.y_train, a.x_val, a.y_val)  # independently
    result, starts = recorded_starts(monkeypatch, get_method(method).run, ctx)
    assert starts["evaluator"] and starts["final"]
    head = ctx.spec.group_names[-1]
    assert not leaves_equal(probe.variables["params"][head], ctx.variables["params"][head])
    for variables in starts["evaluator"] + starts["final"]:
        assert leaves_equal(variables["params"][head], probe.variables["params"][head])  # bit-identical
        for g in ctx.spec.group_names[:-1]:  # the backbone as pretrained
            assert leaves_equal(variables["params"][g], ctx.variables["params"][g])
        assert leaves_equal(variables.get("batch_stats", {}), ctx.variables.get("batch_stats", {}))
    assert result.extra["start"] == "probe" and result.extra["probe_l2"] == probe.l2


def test_with_the_default_start_every_candidate_starts_from_the_fresh_head(monkeypatch):
    from deft_jax.methods import get_method

    ctx = method_context(**{"search.evaluation": '"vmap-1"'})
    result, starts = recorded_starts(monkeypatch, get_method("deft").run, ctx)
    assert all(v is ctx.variables for v in starts["evaluator"] + starts["final"])
    assert result.extra["start"] == "head"


def test_a_search_run_with_start_probe_trains_its_candidates_and_final_model_from_the_probe(monkeypatch, tmp_path):
    from deft_jax.core import probe as probing
    from deft_jax.run import final_model, pipeline

    cfg = tiny_config(**{"search.start": '"probe"', "search.generations": "1", "search.population_size": "4"})
    fitted, starts = [], []
    real_fit, real_evaluator, real_final = probing.fit_head, pipeline.make_evaluator, final_model.train_final

    def fit_head(*args, **kwargs):
        fitted.append(real_fit(*args, **kwargs))
        return fitted[-1]

    def make_evaluator(cfg, spec, variables, data):
        starts.append(variables)
        return real_evaluator(cfg, spec, variables, data)

    def train_final(cfg, spec, variables, mask, data, tuner=None):
        starts.append(variables)
        return real_final(cfg, spec, variables, mask, data, tuner=tuner)

    from deft_jax.evolution import start
    monkeypatch.setattr(start, "fit_head", fit_head)
    monkeypatch.setattr(pipeline, "make_evaluator", make_evaluator)
    monkeypatch.setattr(final_model, "train_final", train_final)
    metrics = pipeline.run_pipeline(cfg, tmp_path / "run")
    (probe,) = fitted
    assert len(starts) == 2 and all(v is probe.variables for v in starts)
    assert metrics["search"]["start"] == "probe"


# --- fine-tune epochs in summary.json ----------------------------------------------------------


def test_summary_records_each_methods_fine_tune_epochs_their_multiple_of_full_and_the_judged_method(tmp_path):
    from deft_jax.config.schema import load_config
    from deft_jax.experiment.records import RUNS, read_runs
    from deft_jax.experiment.runner import run_experiment

    methods = ["full", "linear-probe", "lp-ft", "deft", "deft-mf"]
    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', "search.generations": "1",
            "final.epochs": "3", "final.keep": '"best-val"', "experiment.methods": str(methods).replace("'", '"'),
            "experiment.judged": '"deft"'}
    cfg = load_config(None, tiny_overrides(**over))
    summary = run_experiment(cfg, tmp_path / "exp", seeds=2)
    by = {(r["seed"], r["method"]): r for r in read_runs(tmp_path / "exp" / RUNS)}
    for s in range(2):
        assert by[(s, "full")]["fine_tune_epochs"] == 3  # final.epochs, one rate
        assert by[(s, "linear-probe")]["fine_tune_epochs"] == 0  # the probe trains no epoch
        assert by[(s, "lp-ft")]["fine_tune_epochs"] == 3
        deft = by[(s, "deft")]
        assert deft["fine_tune_epochs"] == deft["fitness_evaluations"] * 1 + 3  # finetune.epochs each, then final
        mf = by[(s, "deft-mf")]
        halving = sum(h["masks_evaluated"] * 1 + h["promoted"] * 3 for h in mf["history"])
        assert mf["fine_tune_epochs"] == halving + 3 and any(h["promoted"] for h in mf["history"])
    cost = summary["cost"]
    for m in methods:
        per_seed = [by[(s, m)]["fine_tune_epochs"] / by[(s, "full")]["fine_tune_epochs"] for s in range(2)]
        assert cost[m]["x_full_epochs"] == pytest.approx(np.mean(per_seed))
        assert cost[m]["fine_tune_epochs"] == pytest.approx(np.mean([by[(s, m)]["fine_tune_epochs"] for s in range(2)]))
    assert cost["full"]["x_full_epochs"] == 1.0 and cost["linear-probe"]["x_full_epochs"] == 0.0
    assert summary["judged"] == "deft"
    assert "Judged method: deft." in (tmp_path / "exp" / "summary.md").read_text()
    assert load_config(None, []).experiment.judged == "deft-default"
