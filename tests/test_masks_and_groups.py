import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deft_jax.models.groups import assign_groups
from deft_jax.core.masks import decode_genome, mask_from_names, mask_key
from deft_jax.models.small_cnn import small_cnn
from deft_jax.core.optimizer import gate_updates


def test_genome_decodes_to_group_mask_with_the_head_always_trained():
    groups = ("conv1", "conv2", "conv3", "head")
    mask = decode_genome([0.9, 0.1, 0.51], groups, threshold=0.5)
    assert mask == {"conv1": True, "conv2": False, "conv3": True, "head": True}
    assert mask_key(mask) == "1011"


def test_genome_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError):
        decode_genome([0.9], ("a", "b", "head"))


def test_every_small_cnn_parameter_belongs_to_exactly_one_group():
    spec = small_cnn(3)
    v = spec.init(0)
    assignment = assign_groups(v["params"], spec.group_rules, spec.group_names)
    assert set(assignment.values()) == set(spec.group_names)
    groups = spec.layer_groups
    assert sum(groups.sizes.values()) == groups.total == sum(x.size for x in jax.tree.leaves(v["params"]))
    assert groups.sizes["conv1"] == sum(x.size for x in jax.tree.leaves(v["params"]["conv1"]))


def test_coverage_check_fails_when_a_parameter_has_no_group():
    spec = small_cnn(3)
    v = spec.init(0)
    with pytest.raises(ValueError, match="without a group"):
        assign_groups(v["params"], spec.group_rules[:-1])


def test_coverage_check_fails_when_a_declared_group_owns_nothing():
    spec = small_cnn(3)
    v = spec.init(0)
    with pytest.raises(ValueError, match="without parameters"):
        assign_groups(v["params"], spec.group_rules, spec.group_names + ("ghost",))


def test_trainable_fraction_counts_parameters_of_trained_groups():
    spec = small_cnn(3)
    v = spec.init(0)
    mask = mask_from_names(["conv2"], spec.group_names)
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    expected = (count(v["params"]["conv2"]) + count(v["params"]["head"])) / count(v["params"])
    assert spec.layer_groups.fraction(mask) == pytest.approx(expected)


def test_gate_as_last_transform_keeps_frozen_leaves_bit_identical_under_momentum_and_weight_decay():
    params = {"a": jnp.arange(4.0), "b": jnp.ones(3)}
    gates = {"a": jnp.float32(0.0), "b": jnp.float32(1.0)}
    tx = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9), gate_updates(gates))
    state = tx.init(params)
    p = params
    for _ in range(5):
        grads = jax.tree.map(lambda x: jnp.full_like(x, 3.0), p)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
    assert np.array_equal(np.asarray(p["a"]), np.asarray(params["a"]))
    assert not np.allclose(np.asarray(p["b"]), np.asarray(params["b"]))


def test_a_leaf_mask_is_the_group_mask_mapped_over_the_group_labels():
    spec = small_cnn(3)
    mask = mask_from_names(["conv1"], spec.group_names)
    pm = spec.layer_groups.leaf_values(mask)
    assert pm["conv1"]["conv"]["kernel"] is True and pm["conv2"]["conv"]["kernel"] is False
    assert pm["head"]["fc"]["kernel"] is True
    assert jax.tree.structure(pm) == jax.tree.structure(spec.init(0)["params"])


def test_layer_groups_are_derived_once_per_model():
    spec = small_cnn(3)
    assert spec.layer_groups is spec.layer_groups


def test_a_seed_gives_one_initial_model_and_a_jax_key_is_refused():
    """search and experiment both call spec.init(cfg.seed): one seed, one initial head."""
    spec = small_cnn(3)
    a, b, other = spec.init(7), spec.init(np.int64(7)), spec.init(8)
    same = jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)
    assert all(jax.tree.leaves(same))
    differs = jax.tree.map(lambda x, y: not np.array_equal(x, y), a["params"]["head"], other["params"]["head"])
    assert any(jax.tree.leaves(differs))
    with pytest.raises(TypeError, match="integer seed"):
        spec.init(jax.random.key(7))
