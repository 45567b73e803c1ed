"""How many XLA programs a search compiles (counted with `deft_jax.runtime.compile_log`,
deterministic where compile seconds are not), and that compiling fewer of them leaves the
fitness where it was: the same logits as one fused forward of the fine-tuned network."""

import numpy as np
import pytest

from deft_jax.core.masks import mask_from_names
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.population import PopulationEvaluator
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.evolution.fitness import PrefixFeatureCache
from deft_jax.runtime import xla_options
from deft_jax.runtime.compile_log import CompileLog

from helpers import small_cnn_problem

# small_cnn's stages are conv1..conv4 and head; first trainable stages 3, 1, 4, 0
FIRST = [["conv4", "head"], ["conv2", "conv4", "head"], ["head"], ["conv1", "head"]]
# the same four first stages again, other masks
SECOND = [["conv4"], ["conv2", "conv3"], [], ["conv1", "conv2", "conv3", "conv4", "head"]]


def masks_of(spec, names):
    return [mask_from_names(n, spec.group_names) for n in names]


def fused_val_logits(spec, variables, data) -> np.ndarray:
    """The reference: the whole network as one program on the raw validation images."""
    return np.asarray(spec.net.apply(variables, data.x_val, train=False))


def test_a_one_member_search_compiles_one_train_program_per_first_stage_and_one_inference_program_per_stage():
    spec, variables, data, cfg = small_cnn_problem(epochs=1)
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), members_per_program=1, compile_after=1)
    with CompileLog() as first:
        ev.evaluate(masks_of(spec, FIRST))
    assert first.programs()["run"] == 4  # first stages 0, 1, 3, 4: one train program each
    # prefix features (stages 0-2) and every member's validation (its first stage to the
    # head) share one inference program per stage
    assert first.programs()["stage_forward"] == len(spec.stage_names)
    assert "member_logits" not in first.programs()
    with CompileLog() as second:
        ev.evaluate(masks_of(spec, SECOND))
    assert "run" not in second.programs() and "stage_forward" not in second.programs()


def test_sequential_evaluation_shares_the_per_stage_inference_programs_between_prefix_and_validation():
    spec, variables, data, cfg = small_cnn_problem(epochs=1)
    ev = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg))
    with CompileLog() as log:
        ev.evaluate(masks_of(spec, FIRST))
    assert log.programs()["run"] == 4  # one static-mask program per mask
    assert log.programs()["stage_forward"] == len(spec.stage_names)


def test_one_member_programs_give_the_fused_networks_validation_logits_and_the_static_masks_fitness():
    spec, variables, data, cfg = small_cnn_problem()
    masks = masks_of(spec, FIRST)
    ev = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), members_per_program=1, compile_after=1)
    logits = ev.evaluate_logits(masks)
    tuned = ev.fine_tune(masks)
    for member, variables_i in zip(logits, tuned):
        np.testing.assert_allclose(member, fused_val_logits(spec, variables_i, data), atol=1e-4)
    sequential = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg)).evaluate_logits(masks)
    np.testing.assert_allclose(logits, sequential, atol=1e-4)


def test_prefix_features_chained_from_a_cached_stage_equal_one_fused_forward_to_that_stage():
    spec, variables, data, _ = small_cnn_problem()
    cache = PrefixFeatureCache(spec, variables, data)
    cache.features(1)
    train, val = cache.features(3)  # from the features entering stage 1
    for x, got in ((data.x_train, train), (data.x_val, val)):
        want = np.asarray(spec.net.apply(variables, x, train=False, stop=3))
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert cache.misses == 2 and cache.hits == 0


def test_fitness_programs_compile_at_level_one_on_cpu_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv(xla_options.ENV, raising=False)
    assert xla_options.fitness_compiler_options() == {"xla_backend_optimization_level": 1}
    monkeypatch.setenv(xla_options.ENV, "default")
    assert xla_options.fitness_compiler_options() is None
    monkeypatch.setenv(xla_options.ENV, "3")
    assert xla_options.fitness_compiler_options() == {"xla_backend_optimization_level": 3}
    monkeypatch.setenv(xla_options.ENV, "fast")
    with pytest.raises(UserError, match=xla_options.ENV):
        xla_options.fitness_compiler_options()


def test_the_compile_log_counts_each_xla_program_once_under_its_functions_name():
    import jax
    import jax.numpy as jnp

    def doubled(x):
        return 2 * x

    fn = jax.jit(doubled)
    with CompileLog() as log:
        fn(jnp.zeros(3))
        fn(jnp.ones(3))  # same shape: no new program
        fn(jnp.zeros(4))
    assert log.programs()["doubled"] == 2
    assert log.summary()["doubled"]["programs"] == 2 and log.seconds("backend_compile_s") > 0
    fn(jnp.zeros(5))  # after the log stopped: not counted
    assert log.programs()["doubled"] == 2
