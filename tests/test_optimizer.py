"""The optax side of the training core: per-leaf learning-rate multipliers are a transform
whose state carries them (traced: one program for every multiplier), and a gated step
leaves frozen leaves and their optimizer state untouched."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import small_cnn_problem

from deft_jax.core import optimizer, training
from deft_jax.core.masks import mask_from_names
from deft_jax.runtime.program_cache import ProgramCache

PARAMS = {"a": {"w": jnp.arange(1.0, 4.0)}, "b": jnp.asarray([0.5, -2.0])}
GRADS = {"a": {"w": jnp.asarray([0.3, -0.7, 1.1])}, "b": jnp.asarray([2.0, 0.25])}


def test_a_leafs_first_update_is_exactly_its_multiplier_times_the_unscaled_update():
    base = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1, momentum=0.9))
    tx = optax.chain(base, optimizer.scale_by_leaf())
    plain, _ = base.update(GRADS, base.init(PARAMS), PARAMS)
    state = optimizer.set_leaf_scales(tx.init(PARAMS), {"a": {"w": jnp.float32(0.25)}, "b": jnp.float32(1.0)})
    scaled, _ = tx.update(GRADS, state, PARAMS)
    np.testing.assert_array_equal(scaled["a"]["w"], plain["a"]["w"] * jnp.float32(0.25))
    np.testing.assert_array_equal(scaled["b"], plain["b"])
    ones, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)  # init: every multiplier 1
    jax.tree.map(np.testing.assert_array_equal, ones, plain)


def test_multipliers_are_traced_state_one_program_serves_every_member():
    tx = optax.chain(optax.sgd(0.1), optimizer.scale_by_leaf())
    programs = ProgramCache()

    def step(scales):
        program = programs.get("update", lambda: jax.jit(jax.vmap(
            lambda s: tx.update(GRADS, optimizer.set_leaf_scales(tx.init(PARAMS), s), PARAMS)[0])))
        return program(scales)

    members = {"a": {"w": jnp.asarray([1.0, 0.5, 2.0])}, "b": jnp.asarray([0.1, 1.0, 3.0])}
    out = step(members)
    step({"a": {"w": jnp.asarray([4.0, 4.0, 4.0])}, "b": jnp.asarray([0.0, 0.0, 0.0])})
    assert programs.compiles == 1
    for i in range(3):
        np.testing.assert_array_equal(out["a"]["w"][i], -0.1 * GRADS["a"]["w"] * members["a"]["w"][i])
        np.testing.assert_array_equal(out["b"][i], -0.1 * GRADS["b"] * members["b"][i])


def test_a_gated_step_with_multipliers_leaves_frozen_leaves_and_their_momentum_untouched():
    spec, variables, data, cfg = small_cnn_problem(weight_decay=0.05)
    mask = mask_from_names(["conv2", "conv4"], spec.group_names)
    gates = {g: jnp.float32(1.0 if on else 0.0) for g, on in mask.items()}
    model = training.StepModel.of(spec, optimizer.make_optimizer(cfg), 0, leaf_scales=True)
    multipliers = {g: 0.5 if g == "conv2" else 1.0 for g in spec.group_names}
    state = training.init_state(model, variables["params"], variables["batch_stats"], gates, multipliers)
    step = jax.jit(lambda s, x, y: training.train_step(model, s, gates, x, y))
    for i in range(3):
        state, _ = step(state, data.x_train[16 * i:16 * (i + 1)], data.y_train[16 * i:16 * (i + 1)])
    trace = state.opt_state[0][1][0].trace  # (decay, (momentum, sgd scale)), scale_by_leaf
    for group, on in mask.items():
        for before, after, momentum in zip(jax.tree.leaves(variables["params"][group]),
                                           jax.tree.leaves(state.params[group]),
                                           jax.tree.leaves(trace[group])):
            if on:
                assert not np.array_equal(before, after)
            else:
                np.testing.assert_array_equal(before, after)  # bit-identical
                np.testing.assert_array_equal(momentum, np.zeros_like(momentum))  # never moved


# --- finetune.schedule -----------------------------------------------------------------------


def test_the_rate_schedules_have_their_defining_values_at_start_peak_and_end():
    from deft_jax.config.schema import FineTuneConfig
    from deft_jax.core.optimizer import learning_rate_schedule

    lr, per_epoch, epochs = 0.1, 10, 4  # 40 steps
    cos = learning_rate_schedule(FineTuneConfig(schedule="cosine"), lr, per_epoch, epochs)
    assert float(cos(0)) == pytest.approx(lr) and float(cos(20)) == pytest.approx(lr / 2)
    assert float(cos(40)) == pytest.approx(0.0, abs=1e-9)
    warm = learning_rate_schedule(FineTuneConfig(schedule="cosine", warmup_epochs=1), lr, per_epoch, epochs)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(lr / 2) and float(warm(10)) == pytest.approx(lr)
    flat = learning_rate_schedule(FineTuneConfig(warmup_epochs=1), lr, per_epoch, epochs)
    assert float(flat(5)) == pytest.approx(lr / 2) and float(flat(10)) == float(flat(39)) == pytest.approx(lr)
    one = learning_rate_schedule(FineTuneConfig(schedule="onecycle"), lr, per_epoch, epochs)
    assert float(one(0)) == pytest.approx(lr / 25) and float(one(12)) == pytest.approx(lr)  # 0.3 x 40
    assert max(float(one(i)) for i in range(41)) == pytest.approx(lr)
    assert float(one(40)) == pytest.approx(lr / 1e5, rel=1e-2)  # fastai: lr_max / div_final
    assert float(one(6)) == pytest.approx(lr / 25 + (lr - lr / 25) / 2)  # halfway up its cosine


def test_a_constant_schedule_trains_as_before_and_a_cosine_one_uses_the_training_sets_step_count():
    from deft_jax.core.finetune import FineTuner

    spec, variables, data, cfg = small_cnn_problem(epochs=2)
    mask = {g: True for g in spec.group_names}

    def losses(c):
        tuner = FineTuner(spec, c)
        return tuner, tuner.fine_tune(variables, mask, data.x_train, data.y_train, seed=0)[1]

    plain, before = losses(cfg)
    assert not plain.scheduled
    cosine, after = losses(dataclasses.replace(cfg, schedule="cosine"))
    assert cosine.scheduled and cosine.steps_per_epoch == 64 // 16
    assert after[0] == pytest.approx(before[0])  # the same first step (rate lr at step 0)
    assert after[-1] != pytest.approx(before[-1])
    _, again = losses(dataclasses.replace(cfg, schedule="constant", warmup_epochs=0.0))
    assert again == before


def test_a_warmup_longer_than_the_training_is_a_config_error():
    from deft_jax.config.schema import load_config
    from deft_jax.errors import UserError

    with pytest.raises(UserError, match="warmup_epochs"):
        load_config(None, ["finetune.warmup_epochs=9", "final.epochs=5", "finetune.epochs=1"])
    assert load_config(None, ["finetune.schedule=onecycle"]).finetune.schedule == "onecycle"


def test_a_scheduled_rate_gives_the_same_fitness_in_the_sequential_and_the_vmapped_evaluator():
    from deft_jax.data.inputs import SplitArrays
    from deft_jax.evolution.evaluators.population import PopulationEvaluator
    from deft_jax.evolution.evaluators.recipe import FitnessRecipe
    from deft_jax.evolution.evaluators.sequential import SequentialEvaluator

    spec, variables, data, cfg = small_cnn_problem(epochs=2)
    data = SplitArrays(data.x_train, data.y_train, data.x_val, data.y_val, 3)
    masks = [mask_from_names(n, spec.group_names) for n in (["conv4"], ["conv2", "conv3"])]
    cosine = dataclasses.replace(cfg, schedule="cosine", warmup_epochs=0.5)
    seq = SequentialEvaluator(spec, variables, data, FitnessRecipe(cosine)).evaluate_logits(masks)
    vmap = PopulationEvaluator(spec, variables, data, FitnessRecipe(cosine), members_per_program=1)
    np.testing.assert_allclose(np.stack(vmap.evaluate_logits(masks)), np.stack(seq), atol=1e-4)
    plain = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg)).evaluate_logits(masks)
    assert not np.allclose(np.stack(plain), np.stack(seq), atol=1e-4)  # the schedule changed the training
