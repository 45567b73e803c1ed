"""Population programs keep their whole-budget members' models (`final.reuse`, `final.ensemble`)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from deft_jax.config.schema import Config
from deft_jax.core import training
from deft_jax.core.masks import mask_key
from deft_jax.evolution.evaluators.population import PopulationEvaluator
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from tests.helpers import small_cnn_problem


def masks(spec):
    groups = spec.group_names
    return [{g: True for g in groups}, {g: i >= len(groups) // 2 for i, g in enumerate(groups)},
            {g: g == "head" for g in groups}]


@pytest.mark.parametrize("members_per_program", [None, 1])
def test_a_population_programs_kept_models_are_the_models_it_fine_tunes(members_per_program):
    spec, variables, data, cfg = small_cnn_problem()
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), members_per_program=members_per_program)
    ev.keep_models = True
    fitness = ev.evaluate(masks(spec))
    ev.evaluate(masks(spec)[:1], epochs=1)  # a lower fidelity keeps nothing and replaces nothing
    tuned = ev.fine_tune(masks(spec))
    assert set(ev.models) == {mask_key(m) for m in masks(spec)}
    for m, f, want in zip(masks(spec), fitness, tuned):
        kept_fitness, kept = ev.models[mask_key(m)]
        assert kept_fitness == f
        jax.tree.map(np.testing.assert_array_equal, kept, want)


def test_a_best_epoch_population_keeps_the_variables_of_the_epoch_its_fitness_scored():
    spec, variables, data, cfg = small_cnn_problem(epochs=4, learning_rate=0.3)
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg, keep="best-val", metric="nll"))
    ev.keep_models = True
    kept_logits = ev.evaluate_logits(masks(spec))
    ev.evaluate(masks(spec))
    for m, logits in zip(masks(spec), kept_logits):
        model = ev.models[mask_key(m)][1]
        np.testing.assert_allclose(training.logits(spec, model, data.x_val), logits, rtol=1e-4, atol=1e-4)


def test_a_population_keeps_only_the_final_candidates():
    spec, variables, data, cfg = small_cnn_problem()
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg))
    config = Config()
    config.final.ensemble = 1
    ev.keep_final_models(config, spec.group_names)
    fitness = ev.evaluate(masks(spec))
    best = mask_key(masks(spec)[int(np.argmin(fitness))])
    assert set(ev.models) == {best, mask_key(masks(spec)[0])}  # the best and the full mask
