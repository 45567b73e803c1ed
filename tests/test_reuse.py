"""With a final-recipe fitness the search's models are final models: the reused winner scores
as the retrained one, and an ensemble averages the probabilities of the best kept models."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_overrides

from deft_jax.config.schema import load_config
from deft_jax.core import ensemble, training
from deft_jax.core.metrics import softmax
from deft_jax.data.inputs import prepare_data
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.experiment.runner import seed_config
from deft_jax.methods import METHODS, ExperimentCache, MethodContext
from deft_jax.models import build_model


def context(**extra):
    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', "final.epochs": "3",
            "finetune.epochs": "1", "search.population_size": "4", "search.generations": "1",
            "final.keep": '"best-val"', "search.evaluation": '"sequential"', **extra}
    cfg = seed_config(load_config(None, tiny_overrides(**over)), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    return MethodContext(cfg=cfg, data=prepare_data(cfg, spec), spec=spec, variables=spec.init(cfg.seed),
                         seed=0, programs=ExperimentCache())


@pytest.fixture
def kept_models(monkeypatch):
    """Every SequentialEvaluator's kept models, as the search leaves them."""
    seen = []
    real = SequentialEvaluator.__init__

    def init(self, *args, **kwargs):
        real(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(SequentialEvaluator, "__init__", init)
    return seen


def test_the_reused_fitness_model_scores_as_the_retrained_winner(kept_models):
    retrained = METHODS["deft-mf"].run(context())
    reused = METHODS["deft-mf"].run(context(**{"final.reuse": "true"}))
    assert retrained.extra["final_reused"] is False and reused.extra["final_reused"] is True
    assert reused.mask == retrained.mask
    assert reused.test["confusion_matrix"] == retrained.test["confusion_matrix"]
    assert reused.val["accuracy"] == retrained.val["accuracy"]
    assert kept_models[-1].models  # the whole-budget members' models were kept


def test_an_ensemble_averages_the_probabilities_of_the_selected_and_next_best_models(kept_models):
    ctx = context(**{"final.ensemble": "3", "search.promote_fraction": "1.0"})  # every member whole-budget
    result = METHODS["deft-mf"].run(ctx)
    models = kept_models[-1].models
    keys = result.extra["ensemble_members"]
    assert len(keys) == min(3, len(models)) >= 2
    rest = sorted(models[k][0] for k in models if k != keys[0])
    assert [models[k][0] for k in keys[1:]] == rest[:len(keys) - 1]
    probs = np.mean([softmax(np.asarray(training.logits(ctx.spec, models[k][1], ctx.data.x_test), np.float64))
                     for k in keys], axis=0)
    assert result.test["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == ctx.data.y_test)))


def test_the_ensemble_lists_the_selected_mask_first_then_the_best_by_fitness():
    models = {"a": (0.3, {}), "b": (0.1, {}), "c": (0.2, {}), "d": (0.2, {})}
    assert ensemble.members("a", models, 3) == ["a", "b", "c"]  # c before d: earliest on ties
    assert ensemble.members("b", models, 1) == ["b"]


def test_the_evaluator_keeps_only_the_ensembles_candidates_and_the_full_mask_and_the_ensemble_is_unchanged(kept_models):
    ctx = context(**{"final.ensemble": "2", "search.promote_fraction": "1.0"})  # every member whole-budget
    result = METHODS["deft-keep"].run(ctx)
    models = kept_models[-1].models
    whole = {k: v for k, v in result.extra["memo"].items() if k not in result.extra["memo_short_budget"]}
    full = "1" * len(ctx.spec.group_names)
    assert len(whole) > 3 and len(models) <= 3 and full in models  # the others were dropped
    keys = result.extra["ensemble_members"]
    best_other = min((k for k in whole if k != keys[0]), key=lambda k: whole[k])
    assert keys == [keys[0], best_other] and keys[0] in (full, min(whole, key=whole.get))
