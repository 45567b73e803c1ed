"""The CIFAR ResNets match the PyTorch reference on the same pretrained weights."""

from __future__ import annotations

import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import CIFAR_RESNET_WEIGHTS, needs_cifar_resnet
from deft_jax.errors import UserError
from deft_jax.models.resnet_cifar import find_cifar_resnet_weights, resnet_cifar
from deft_jax.models.torch_weights import read_torch_state_dict

BATCH = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype(np.float32)


def _torch_model(depth):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_twins.torch_resnet_cifar import ResNetCifar, load_checkpoint

    torch.manual_seed(0)
    return torch, load_checkpoint(ResNetCifar(depth, 10),
                                  find_cifar_resnet_weights(depth, CIFAR_RESNET_WEIGHTS))


def _zeros_like_init(spec):
    """Variables of the right structure without running random init.

    Eager random init compiles one PRNG kernel per parameter shape (~1 s each on a small
    CPU box); with `cifar_head=True` every variable comes from the file anyway.
    """
    x = jnp.zeros((1, spec.input_size, spec.input_size, 3))
    shapes = jax.eval_shape(lambda key: spec.net.init(key, x, train=False),
                            jax.random.PRNGKey(0))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    return {"params": zeros["params"], "batch_stats": zeros["batch_stats"]}


def _ours(depth):
    """Pretrained spec with the checkpoint's CIFAR head, and its variables."""
    spec = resnet_cifar(depth, 10, find_cifar_resnet_weights(depth, CIFAR_RESNET_WEIGHTS),
                        cifar_head=True)
    return spec, spec.load_pretrained(_zeros_like_init(spec))


def _nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@needs_cifar_resnet
@pytest.mark.parametrize("depth", [20, 56])
def test_logits_match_pytorch_forward_of_the_same_weights(depth):
    torch, reference = _torch_model(depth)
    spec, variables = _ours(depth)
    with jax.default_matmul_precision("float32"):
        ours = np.asarray(spec.net.apply(variables, jnp.asarray(BATCH), train=False))
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(_nchw(BATCH))).numpy()
    diff = np.abs(ours - expected).max()
    print(f"resnet{depth} eval max abs logit diff: {diff:.3g}")
    assert ours.shape == (4, 10)
    assert diff <= 1e-4


@needs_cifar_resnet
def test_train_mode_outputs_and_updated_running_stats_match_pytorch():
    torch, reference = _torch_model(20)
    spec, variables = _ours(20)
    with jax.default_matmul_precision("float32"):
        ours, updates = spec.net.apply(variables, jnp.asarray(BATCH), train=True,
                                       mutable=["batch_stats"])
    reference.train()
    with torch.no_grad():
        expected = reference(torch.from_numpy(_nchw(BATCH))).numpy()
    diff = np.abs(np.asarray(ours) - expected).max()
    print(f"resnet20 train-mode max abs logit diff: {diff:.3g}")
    assert diff <= 1e-4

    stats = updates["batch_stats"]
    torch_state = {k: v.numpy() for k, v in reference.state_dict().items()}
    checked = 0
    for key, value in torch_state.items():
        if not key.endswith(("running_mean", "running_var")):
            continue
        module, _, stat = key.rpartition(".")
        if module.startswith("layer"):
            layer, block, bn = module.split(".")
            node = stats[f"{layer}_{block}"][bn]
        else:
            node = stats["stem"][module]
        ours_stat = np.asarray(node["mean" if stat == "running_mean" else "var"])
        np.testing.assert_allclose(ours_stat, value, rtol=0, atol=1e-5, err_msg=key)
        checked += 1
    assert checked == 2 * 19  # 19 BatchNorms in ResNet-20


@needs_cifar_resnet
def test_pretrained_tensors_land_in_the_right_place_with_hwio_kernels():
    path = find_cifar_resnet_weights(20, CIFAR_RESNET_WEIGHTS)
    tensors = read_torch_state_dict(path)
    spec, variables = _ours(20)
    assert spec.pretrained == str(path)
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(params["stem"]["conv1"]["kernel"],
                                  tensors["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["layer3_2"]["conv2"]["kernel"],
                                  tensors["layer3.2.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["layer2_0"]["bn1"]["scale"],
                                  tensors["layer2.0.bn1.weight"])
    np.testing.assert_array_equal(params["layer2_0"]["bn1"]["bias"],
                                  tensors["layer2.0.bn1.bias"])
    np.testing.assert_array_equal(stats["layer2_0"]["bn1"]["mean"],
                                  tensors["layer2.0.bn1.running_mean"])
    np.testing.assert_array_equal(stats["layer2_0"]["bn1"]["var"],
                                  tensors["layer2.0.bn1.running_var"])
    np.testing.assert_array_equal(params["head"]["fc"]["kernel"], tensors["linear.weight"].T)
    np.testing.assert_array_equal(params["head"]["fc"]["bias"], tensors["linear.bias"])


@needs_cifar_resnet
def test_without_cifar_head_the_backbone_loads_and_the_fresh_head_is_left_alone():
    spec = resnet_cifar(20, 7, find_cifar_resnet_weights(20, CIFAR_RESNET_WEIGHTS))
    loaded = spec.load_pretrained(_zeros_like_init(spec))
    assert not np.any(loaded["params"]["head"]["fc"]["kernel"])  # untouched zeros
    assert loaded["params"]["head"]["fc"]["kernel"].shape == (64, 7)
    # every backbone leaf was overwritten (BN variances are never exactly zero)
    for stage, modules in loaded["batch_stats"].items():
        for bn, stat in modules.items():
            assert np.all(stat["var"] > 0), (stage, bn)
    assert np.any(loaded["params"]["layer1_0"]["conv1"]["kernel"])


def test_parameters_are_grouped_by_stage_in_forward_order():
    for depth, n in [(20, 3), (56, 9)]:
        spec = resnet_cifar(depth, 5)
        expected = (["stem"] + [f"layer{l}_{i}" for l in (1, 2, 3) for i in range(n)]
                    + ["head"])
        assert list(spec.stage_names) == expected
        assert list(spec.group_names) == expected
        variables = spec.variable_shapes()
        assert set(variables["params"]) == set(expected)  # pytrees sort dict keys
        assert set(variables["batch_stats"]) == set(expected[:-1])
        for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
            name = "/".join(p.key for p in path)
            groups = [g for rule, g in spec.group_rules if re.search(rule, name)]
            assert groups == [name.split("/")[0]], name


def test_other_input_sizes_give_logits_of_the_right_shape():
    spec = resnet_cifar(20, 3, input_size=64)
    variables = _zeros_like_init(spec)
    x = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(lambda v: spec.net.apply(v, x, train=False), variables)
    assert out.shape == (2, 3) and spec.pretrained is None and spec.name == "resnet20"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)


@needs_cifar_resnet
def test_a_resnet32_file_into_resnet20_is_a_user_error_naming_unexpected_keys():
    path = find_cifar_resnet_weights(32, CIFAR_RESNET_WEIGHTS)
    with pytest.raises(UserError, match=r"does not match resnet20: unexpected layer1\.3\."):
        resnet_cifar(20, 10, path)


@needs_cifar_resnet
def test_a_resnet20_file_into_resnet32_is_a_user_error_naming_missing_keys():
    path = find_cifar_resnet_weights(20, CIFAR_RESNET_WEIGHTS)
    with pytest.raises(UserError, match=r"does not match resnet32: missing layer1\.3\."):
        resnet_cifar(32, 10, path)


@needs_cifar_resnet
def test_a_cifar_head_with_the_wrong_class_count_is_a_user_error():
    path = find_cifar_resnet_weights(20, CIFAR_RESNET_WEIGHTS)
    with pytest.raises(UserError, match=r"linear\.weight has shape \(10, 64\)"):
        resnet_cifar(20, 100, path, cifar_head=True)


@needs_cifar_resnet
def test_a_weights_directory_resolves_to_the_checkpoint_of_that_depth(tmp_path):
    spec = resnet_cifar(44, 10, CIFAR_RESNET_WEIGHTS)
    assert spec.pretrained.endswith(".th") and "resnet44-" in spec.pretrained
    with pytest.raises(UserError, match="no resnet56-"):
        find_cifar_resnet_weights(56, tmp_path)
    shutil.copy(find_cifar_resnet_weights(56, CIFAR_RESNET_WEIGHTS), tmp_path)
    assert find_cifar_resnet_weights(56, tmp_path).parent == tmp_path


@pytest.mark.parametrize("depth", [18, 50, 110])
def test_an_unknown_depth_is_a_user_error(depth):
    with pytest.raises(UserError, match=f"depth {depth}"):
        resnet_cifar(depth, 10)


def test_a_cifar_head_without_weights_is_a_user_error():
    with pytest.raises(UserError, match="cifar_head"):
        resnet_cifar(20, 10, cifar_head=True)
