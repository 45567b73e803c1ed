import jax
import numpy as np
import pytest

from deft_jax.config.schema import FineTuneConfig
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.data.inputs import SplitArrays
from deft_jax.core.finetune import FineTuner
from deft_jax.data.batches import batch_plan
from deft_jax.core.masks import mask_from_names
from deft_jax.models.small_cnn import small_cnn

from helpers import random_arrays


def leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_frozen_parameters_and_batchnorm_statistics_are_bit_identical_after_fine_tuning(optimizer):
    spec = small_cnn(3, input_size=16)
    v0 = spec.init(0)
    x, y = random_arrays()
    cfg = FineTuneConfig(optimizer=optimizer, learning_rate=0.1, momentum=0.9,
                         weight_decay=0.05, batch_size=16, epochs=2)
    mask = mask_from_names(["conv2", "conv4"], spec.group_names)
    v1, _ = FineTuner(spec, cfg).fine_tune(v0, mask, x, y, seed=0)
    for collection in ("params", "batch_stats"):
        for group, sub in v0[collection].items():
            for (path, before), (_, after) in zip(leaves(sub), leaves(v1[collection][group])):
                same = np.array_equal(np.asarray(before), np.asarray(after))
                assert same == (not mask[group]) or group == "head" and not same, (collection, group, path)


def test_trainable_groups_update_their_batchnorm_running_statistics():
    spec = small_cnn(3, input_size=16)
    v0 = spec.init(0)
    x, y = random_arrays()
    mask = mask_from_names(["conv3"], spec.group_names)
    v1, _ = FineTuner(spec, FineTuneConfig(batch_size=16)).fine_tune(v0, mask, x, y, seed=0)
    assert not np.array_equal(v0["batch_stats"]["conv3"]["bn"]["mean"], v1["batch_stats"]["conv3"]["bn"]["mean"])
    assert np.array_equal(v0["batch_stats"]["conv1"]["bn"]["mean"], v1["batch_stats"]["conv1"]["bn"]["mean"])


def test_batch_plan_is_identical_for_a_seed_and_uses_full_batches_only():
    a = batch_plan(50, 16, 2, seed=3)
    b = batch_plan(50, 16, 2, seed=3)
    assert len(a) == 6 and all(len(i) == 16 for i in a)
    assert all(np.array_equal(i, j) for i, j in zip(a, b))
    assert not all(np.array_equal(i, j) for i, j in zip(a, batch_plan(50, 16, 2, seed=4)))


def _evaluator(cache_prefix, **cfg):
    spec = small_cnn(3, input_size=16)
    v0 = spec.init(1)
    x, y = random_arrays(96)
    data = SplitArrays(x[:64], y[:64], x[64:], y[64:], 3)
    return spec, SequentialEvaluator(
        spec, v0, data, FitnessRecipe(FineTuneConfig(batch_size=16, learning_rate=0.1, **cfg),
                                      cache_prefix=cache_prefix))


def test_frozen_prefix_feature_cache_gives_the_same_fitness_as_no_cache():
    spec, cached = _evaluator(True)
    _, plain = _evaluator(False)
    masks = [mask_from_names(names, spec.group_names)
             for names in (["conv3", "conv4"], ["conv4"], [], ["conv2"], ["conv4"])]
    # the validation logits, not just the (coarse) accuracy
    np.testing.assert_allclose(cached.evaluate_logits(masks), plain.evaluate_logits(masks), atol=1e-4)
    assert cached.evaluate(masks) == pytest.approx(plain.evaluate(masks), abs=1e-9)
    assert cached.prefix.hits >= 1 and cached.prefix.misses >= 1
    assert plain.prefix.hits == plain.prefix.misses == 0


def test_frozen_prefix_logits_match_the_full_network_after_fine_tuning():
    spec, cached = _evaluator(True)
    mask = mask_from_names(["conv4"], spec.group_names)
    start = 3
    xt, xv = cached.prefix.features(start)
    vc, _ = cached.tuner.fine_tune(cached.variables, mask, xt, cached.data.y_train, seed=0, start=start)
    vf, _ = cached.tuner.fine_tune(cached.variables, mask, cached.data.x_train, cached.data.y_train, seed=0)
    np.testing.assert_allclose(cached.tuner.logits(vc, xv, start=start),
                               cached.tuner.logits(vf, cached.data.x_val), atol=1e-4)


def test_prefix_cache_is_switched_off_when_augmentation_is_on():
    _, ev = _evaluator(True, flip=True)
    assert ev.cache_prefix is False
