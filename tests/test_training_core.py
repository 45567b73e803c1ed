"""The one training core: every evaluation mode trains what the static-mask reference
trains, and a member does no work below its first trainable stage."""

import jax
import numpy as np
import optax
import pytest

from deft_jax.data import batches
from deft_jax.core import optimizer, training
from deft_jax.evolution.evaluators.choice import Evaluator, build_evaluator
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.core.masks import mask_from_names
from deft_jax.evolution.evaluators.population import PopulationEvaluator

from helpers import small_cnn_problem

# trainable groups below, between and above frozen ones; first stages 0, 1, 2, 3 and head
MASKS = [["conv1", "conv3"], ["conv2", "conv4"], ["conv3"], ["conv4"], [], ["conv1", "conv2", "conv3", "conv4"]]


problem = small_cnn_problem


@pytest.mark.parametrize("mode", ["vmap", "vmap-1"])
def test_every_evaluation_mode_gives_the_static_mask_references_validation_logits(mode):
    spec, variables, data, cfg = problem()
    masks = [mask_from_names(n, spec.group_names) for n in MASKS]
    reference = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg)).evaluate_logits(masks)
    evaluator = build_evaluator(mode, spec, variables, data, FitnessRecipe(cfg))
    assert isinstance(evaluator, Evaluator) and evaluator.name == mode
    np.testing.assert_allclose(evaluator.evaluate_logits(masks), reference, atol=1e-4)


def test_vmap_1_can_start_each_member_at_its_own_first_trainable_stage():
    spec, variables, data, cfg = problem()
    masks = [mask_from_names(n, spec.group_names) for n in MASKS]
    one = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), members_per_program=1, compile_after=1)
    one.evaluate(masks)
    stages = len(spec.stage_names)  # conv1..conv4 + head
    firsts = [0, 1, 2, 3, 4, 0]
    assert one.stats()["stages_trained"] == sum(stages - k for k in firsts)
    whole = build_evaluator("vmap", spec, variables, data, FitnessRecipe(cfg))
    whole.evaluate(masks)  # one program for the whole population: from its lowest first stage
    assert whole.stats()["stages_trained"] == stages * len(masks)


def test_a_first_stage_gets_its_own_program_only_once_it_recurs():
    """Rent or buy (default compile_after=3): a member whose first stage is rarely wanted
    runs from the population's lowest first stage; once that stage has been wanted three
    times it gets its own program, and later members with it train from there."""
    spec, variables, data, cfg = problem()
    population = [mask_from_names(n, spec.group_names) for n in (["conv1"], [])]  # first stages 0, 4
    ev = build_evaluator("vmap-1", spec, variables, data, FitnessRecipe(cfg))
    trained = []
    for _ in range(3):
        before = ev.stats()["stages_trained"]
        ev.evaluate(population)
        trained.append(ev.stats()["stages_trained"] - before)
    assert trained == [5 + 5, 5 + 5, 5 + 1]


def _convolutions(jaxpr) -> int:
    return str(jaxpr).count("conv_general_dilated")


@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_a_program_from_stage_k_runs_no_forward_or_backward_convolution_below_k(start):
    """small_cnn has one convolution per stage. From stage k, the compiled fine-tune has the
    forward and weight-gradient convolutions of stages k..3 and input-gradient convolutions
    only above k: 3 * (4 - k) - 1. Nothing of stages below k is in the program."""
    spec, variables, data, cfg = problem()
    model = training.StepModel.of(spec, optimizer.make_optimizer(cfg), start)
    params = training.suffix(variables["params"], spec, start)
    stats = training.suffix(variables["batch_stats"], spec, start)
    gates = {g: np.float32(1.0) for g in spec.group_names}
    state = training.init_state(model, params, stats, gates)
    x = training.logits(spec, variables, data.x_train[:16], stop=start) if start else data.x_train[:16]
    xs, ys = x[None], data.y_train[None, :16]
    jaxpr = jax.make_jaxpr(training.fine_tune_program(model))(state, gates, xs, ys)
    assert _convolutions(jaxpr) == 3 * (4 - start) - 1
    assert set(state.params) == set(spec.stage_names[start:])


def test_a_static_mask_differentiates_only_its_trainable_groups():
    """Static flags: no weight-gradient convolution for a frozen group (conv2 frozen between
    trainable conv1 and conv3: its input gradient is still needed)."""
    spec, variables, data, cfg = problem()
    mask = mask_from_names(["conv1", "conv3"], spec.group_names)
    model = training.StepModel.of(spec, optimizer.make_optimizer(cfg), 0)
    state = training.init_state(model, variables["params"], variables["batch_stats"], mask)
    jaxpr = jax.make_jaxpr(training.fine_tune_program(model, mask))(
        state, None, data.x_train[None, :16], data.y_train[None, :16])
    # forward 4; weight gradients conv1, conv3; input gradients conv2, conv3, conv4
    assert _convolutions(jaxpr) == 4 + 2 + 3


def test_the_scan_program_equals_one_jitted_step_per_batch():
    spec, variables, data, cfg = problem()
    mask = mask_from_names(["conv2", "conv4"], spec.group_names)
    model = training.StepModel.of(spec, optimizer.make_optimizer(cfg), 0)
    (xs, ys), = batches.training_batches(data.x_train, data.y_train, cfg, cfg.epochs, seed=0)
    state = training.init_state(model, variables["params"], variables["batch_stats"], mask)
    scanned, losses = jax.jit(training.fine_tune_program(model, mask))(state, None, xs, ys)
    step = jax.jit(lambda s, x, y: training.train_step(model, s, mask, x, y))
    looped, looped_losses = state, []
    for x, y in zip(xs, ys):
        looped, loss = step(looped, x, y)
        looped_losses.append(loss)
    np.testing.assert_allclose(losses, looped_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(looped.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_agrees_with_float32_fitness():
    """bf16 arithmetic (float32 weights and statistics): logits close to float32's on
    average (bf16 rounding drifts over the steps) and the same predictions almost
    everywhere."""
    spec, variables, data, cfg32 = problem(epochs=1)
    _, _, _, cfg16 = problem(epochs=1, compute_dtype="bfloat16")
    masks = [mask_from_names(n, spec.group_names) for n in MASKS]
    l32 = build_evaluator("vmap-1", spec, variables, data, FitnessRecipe(cfg32)).evaluate_logits(masks)
    l16 = build_evaluator("vmap-1", spec, variables, data, FitnessRecipe(cfg16)).evaluate_logits(masks)
    assert np.all(np.isfinite(l16))
    # observed on this toy problem (random labels, lr 0.1): mean |difference| ~5% of the
    # mean |logit|, predictions ~95% equal
    assert np.mean(np.abs(l16 - l32)) <= 0.1 * np.mean(np.abs(l32))
    agree = np.mean(l16.argmax(-1) == l32.argmax(-1))
    assert agree >= 0.9


def test_gated_members_keep_frozen_leaves_bit_identical_with_momentum_and_weight_decay():
    spec, variables, data, cfg = problem(weight_decay=0.05)
    masks = [mask_from_names(n, spec.group_names) for n in MASKS]
    members = PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), members_per_program=1).fine_tune(masks)
    for mask, trained in zip(masks, members):
        for group in spec.group_names:
            before = jax.tree.leaves(variables["params"][group])
            after = jax.tree.leaves(trained["params"][group])
            same = all(np.array_equal(np.asarray(b), np.asarray(a)) for b, a in zip(before, after))
            assert same == (not mask[group]), group


def test_auto_rgn_scaling_refreshes_its_multipliers_once_per_epoch():
    from deft_jax.methods.auto_rgn import scale_by_rgn

    tx = scale_by_rgn(optax.sgd(1.0), steps_per_epoch=2)
    params = {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    state = tx.init(params)
    seen = []
    for g_a in (1.0, 4.0, 2.0):  # the gradient of "a" relative to "b" changes every step
        grads = {"a": np.full(3, g_a, np.float32), "b": np.full(2, 1.0, np.float32)}
        _, state = tx.update(grads, state, params)
        seen.append({k: float(v) for k, v in state.multipliers.items()})
    assert seen[0] == seen[1]  # held within the epoch
    assert seen[2] != seen[1]  # recomputed at the next epoch's first step
    assert max(seen[0].values()) == 1.0
