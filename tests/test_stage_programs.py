"""`finetune.step = "stages"` (`deft_jax.core.stages`): a static-mask fine-tune as a chain of
per-stage programs gives the gated program's results, compiles each stage variant once for
every mask, builds no weight gradient for a frozen stage and leaves frozen leaves as they
were."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deft_jax.config.schema import FineTuneConfig, load_config
from deft_jax.core import stages
from deft_jax.core.finetune import FineTuner
from deft_jax.core.masks import mask_from_names
from deft_jax.errors import UserError
from deft_jax.models.registry import build_model
from deft_jax.runtime.compile_log import CompileLog

from helpers import random_arrays

# 24 images at batch 8: 3 train steps per fine-tune
RECIPE = FineTuneConfig(batch_size=8, epochs=1, learning_rate=0.01, momentum=0.9, weight_decay=0.01)
MASKS = {"all trainable": None, "only the last stage": ["layer3_2"], "a middle stage only": ["layer2_1"],
         "head only": []}


@functools.cache
def resnet20():
    spec = build_model("resnet20", 10, "none", 32)
    return spec, spec.init(0)


def mask_of(spec, names):
    return mask_from_names(spec.group_names if names is None else names, spec.group_names)


def tuned(step: str, names, tuner: FineTuner | None = None):
    spec, variables = resnet20()
    x, y = random_arrays(24, size=32, classes=10)
    tuner = FineTuner(spec, dataclasses.replace(RECIPE, step=step)) if tuner is None else tuner
    trained, losses = tuner.fine_tune(variables, mask_of(spec, names), x, y, seed=0)
    return trained, losses, tuner.logits(trained, x)


def max_difference(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))),
                                            a, b)))


@pytest.mark.parametrize("which", list(MASKS))
def test_the_chained_stage_programs_give_the_gated_programs_logits_and_parameter_updates(which):
    spec, variables = resnet20()
    gated, gated_losses, gated_logits = tuned("gated", MASKS[which])
    chained, chained_losses, chained_logits = tuned("stages", MASKS[which])
    assert len(chained_losses) == 3
    np.testing.assert_allclose(chained_losses, gated_losses, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chained_logits, gated_logits, rtol=1e-5, atol=1e-5)
    update = functools.partial(jax.tree.map, lambda new, old: np.asarray(new) - np.asarray(old))
    assert max_difference(update(chained["params"], variables["params"]),
                          update(gated["params"], variables["params"])) < 1e-5
    assert max_difference(chained["batch_stats"], gated["batch_stats"]) < 1e-5
    assert max_difference(update(chained["params"], variables["params"]),
                          jax.tree.map(np.zeros_like, variables["params"])) > 0  # something trained


def test_the_stage_programs_compile_once_per_stage_variant_whatever_the_mask():
    spec, _ = resnet20()
    tuner = FineTuner(spec, dataclasses.replace(RECIPE, step="stages"))
    with CompileLog() as first:
        tuned("stages", ["layer3_0"], tuner)  # layer3_0 lowest, layer3_1 and layer3_2 frozen above it
        tuned("stages", ["layer3_1", "layer3_2"], tuner)  # layer3_2 trains above the lowest
    n = len(spec.stage_names)
    counts = first.programs()
    # frozen forward: stem..layer2_2 (both masks), layer3_1, layer3_2 (first mask), layer3_0 (second)
    assert counts[stages.FROZEN_FORWARD] == n - 1
    assert counts[stages.TRAIN_FORWARD] == 4  # layer3_0, layer3_1, layer3_2, head
    assert counts[stages.LOWEST_BACKWARD] == 2  # layer3_0, layer3_1
    assert counts[stages.TRAIN_BACKWARD] == 2  # head; layer3_2
    assert counts[stages.FROZEN_BACKWARD] == 2  # layer3_1, layer3_2 (first mask)
    assert counts[stages.LOSS_GRADIENT] == 1
    built = tuner.compiles
    with CompileLog() as second:  # every stage variant of this new mask was built above
        tuned("stages", ["layer3_0", "layer3_2"], tuner)
    assert not set(second.programs()) & {*stages.VARIANTS, stages.LOSS_GRADIENT}
    assert tuner.compiles == built
    gated = FineTuner(spec, RECIPE)
    for names in (["layer3_0"], ["layer3_1", "layer3_2"], ["layer3_0", "layer3_2"]):
        tuned("gated", names, gated)
    assert gated.compiles == 3  # the gated path: one program per frozen pattern


def conv_outputs_shaped_like(jaxpr, shapes) -> int:
    """`conv_general_dilated` equations (nested jaxprs included) whose output has one of
    `shapes`: the gradients w.r.t. conv kernels."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated" and tuple(eqn.outvars[0].aval.shape) in shapes:
            count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += conv_outputs_shaped_like(sub.jaxpr, shapes)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += conv_outputs_shaped_like(sub, shapes)
    return count


def test_a_frozen_stages_backward_program_never_computes_its_weight_gradient():
    spec, variables = resnet20()
    chain = stages.StagePrograms(spec, optax.sgd(0.1, momentum=0.9))
    index = spec.stage_names.index("layer2_0")  # stride 2, 16 -> 32 channels
    name = spec.stage_names[index]
    params, stats = variables["params"][name], variables["batch_stats"][name]
    h = jnp.zeros((4, 32, 32, 16))
    g = jnp.ones((4, 16, 16, 32))
    kernels = {tuple(leaf.shape) for leaf in jax.tree.leaves(params) if leaf.ndim == 4}
    assert kernels == {(3, 3, 16, 32), (3, 3, 32, 32)}
    frozen = jax.make_jaxpr(chain.function(stages.FROZEN_BACKWARD, index))(params, stats, h, g)
    trainable = jax.make_jaxpr(chain.function(stages.TRAIN_BACKWARD, index))(
        params, stats, h, g, chain.tx.init(params))
    assert conv_outputs_shaped_like(frozen.jaxpr, kernels) == 0
    assert conv_outputs_shaped_like(trainable.jaxpr, kernels) == 2  # conv1's and conv2's kernels
    assert all(tuple(v.aval.shape) not in kernels for v in frozen.jaxpr.outvars)
    assert [tuple(v.aval.shape) for v in frozen.jaxpr.outvars] == [tuple(h.shape)]  # the input gradient only


def test_frozen_leaves_and_their_statistics_stay_bit_identical_under_the_stage_programs():
    spec, variables = resnet20()
    trained, _, _ = tuned("stages", ["layer2_1"])
    trains = {"layer2_1", "head"}
    for collection in ("params", "batch_stats"):
        for name, tree in variables[collection].items():
            same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                                tree, trained[collection][name]))
            assert all(same) != (name in trains), (collection, name)


def test_the_step_option_is_validated_and_gated_by_default():
    assert load_config(None, []).finetune.step == "gated"
    assert load_config(None, ["finetune.step=stages"]).finetune.step == "stages"
    with pytest.raises(UserError, match="finetune.step"):
        load_config(None, ["finetune.step=layers"])


def test_sequential_evaluation_with_stage_programs_gives_the_gated_fitness_logits_from_cached_prefixes():
    from deft_jax.evolution.evaluators.recipe import FitnessRecipe
    from deft_jax.evolution.evaluators.sequential import SequentialEvaluator

    from helpers import small_cnn_problem

    spec, variables, data, cfg = small_cnn_problem(epochs=1)
    masks = [mask_from_names(n, spec.group_names) for n in (["conv4"], ["conv2", "conv4"], [])]
    masks.append({**masks[1], "conv2": 0.1})  # a per-group learning-rate multiplier (mask+lr)
    logits = {}
    for step in ("gated", "stages"):
        recipe = FitnessRecipe(dataclasses.replace(cfg, step=step), lr_multipliers=True)
        evaluator = SequentialEvaluator(spec, variables, data, recipe)
        logits[step] = evaluator.evaluate_logits(masks)
        assert evaluator.tuner.uses_stages == (step == "stages")
    np.testing.assert_allclose(logits["stages"], logits["gated"], rtol=1e-5, atol=1e-5)


def test_a_custom_optimizer_keeps_the_gated_program_under_the_stages_option():
    spec, _ = resnet20()
    tuner = FineTuner(spec, dataclasses.replace(RECIPE, step="stages"), tx=optax.sgd(0.01))
    assert not tuner.uses_stages
