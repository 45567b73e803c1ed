"""EfficientNet-Lite0: exact agreement with the PyTorch reference, layer groups, BN modes,
and verification of weight files."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.errors import UserError
from deft_jax.models.convolutions import DepthwiseConv
from deft_jax.models.efficientnet_lite import default_lite0_weights, efficientnet_lite0
from conftest import CIFAR_RESNET_WEIGHTS, lite0_weights_path, needs_lite0

STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
BLOCK_NAMES = tuple(f"block{i}" for i in range(16))
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _paths(tree, prefix=()):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    else:
        yield "/".join(prefix), tree


def _group_by_rules(rules, path):
    for pattern, group in rules:
        if re.search(pattern, path):
            return group
    return None


def _abstract_variables(spec, size=32):
    return jax.eval_shape(functools.partial(spec.net.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


@pytest.fixture(scope="module")
def imagenet():
    """Lite0 with the ImageNet head and weights; one init shared by the module's tests."""
    spec = efficientnet_lite0(1000, lite0_weights_path(), input_size=224, imagenet_head=True)
    variables = spec.init(0)
    # Loading into a NaN template proves every variable (ImageNet head included) is copied.
    template = jax.tree.map(lambda s: np.full(s.shape, np.nan, s.dtype), spec.variable_shapes())
    loaded = spec.load_pretrained(template)
    assert not any(np.isnan(np.asarray(leaf)).any() for leaf in jax.tree.leaves(loaded))
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)
    forward = jax.jit(lambda v, x: spec.net.apply(v, x, train=False))
    return spec, variables, forward


def _batch(size, n=2, seed=0):
    # Roughly the range of normalised images: [0, 1] scaled by (x - 0.5) / 0.5.
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, size, size, 3)).astype(np.float32)


@needs_lite0
def test_lite0_logits_match_pytorch_forward_of_the_same_imagenet_weights(imagenet):
    torch = pytest.importorskip("torch")
    efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
    spec, variables, forward = imagenet
    state = torch.load(lite0_weights_path(), map_location="cpu")
    for size in (224, 96):
        # image_size given -> the reference uses static TF-SAME padding for that size.
        reference = efficientnet_lite_pytorch.EfficientNet.from_name(
            "efficientnet-lite0", image_size=size)
        reference.load_state_dict(state)
        reference.eval()
        x = _batch(size, seed=size)
        with torch.no_grad():
            expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        with jax.default_matmul_precision("float32"):
            logits = np.asarray(forward(variables, x))
        diff = float(np.abs(logits - expected).max())
        print(f"lite0 {size}px: max |logit diff| = {diff:.2e} (max |logit| {np.abs(expected).max():.2f})")
        assert logits.shape == (2, 1000)
        assert diff <= 1e-4


@needs_lite0
def test_lite0_classifies_chelsea_the_cat_as_a_cat(imagenet):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    spec, variables, forward = imagenet
    image = Image.fromarray(skimage_data.chelsea()).resize((224, 224), Image.BILINEAR)
    x = np.asarray(image, np.float32) / 255.0
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    # The cat and its mirror image: a batch of 2 reuses the compiled forward.
    batch = np.stack([x, x[:, ::-1]])
    with jax.default_matmul_precision("float32"):
        logits = np.asarray(forward(variables, batch))
    top1 = logits.argmax(axis=-1)
    assert all(int(c) in CAT_CLASSES for c in top1), top1


def test_block_granularity_makes_each_stage_its_own_group_in_forward_order():
    spec = efficientnet_lite0(5)
    names = ("stem", *BLOCK_NAMES, "final_conv", "head")
    assert spec.name == "efficientnet_lite0"
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert spec.stage_names == names
    assert spec.group_names == names
    variables = _abstract_variables(spec)
    # Key order does not survive jax tree operations (they sort), so order lives in the spec.
    assert set(variables["params"]) == set(names)
    for path, _ in _paths(variables["params"]):
        assert _group_by_rules(spec.group_rules, path) == path.split("/")[0], path
    assert variables["params"]["head"]["fc"]["kernel"].shape == (1280, 5)
    # 4.65M parameters in the backbone, as in the torch model without its classifier.
    backbone = sum(int(np.prod(leaf.shape)) for path, leaf in _paths(variables["params"])
                   if not path.startswith("head/"))
    assert backbone == 4_652_008 - 1281 * 1000


def test_stage_granularity_groups_blocks_by_the_reference_mbconv_stages():
    spec = efficientnet_lite0(5, granularity="stage")
    stages = tuple(f"stage{i}" for i in range(1, 8))
    assert spec.group_names == ("stem", *stages, "final_conv", "head")
    assert spec.stage_names == ("stem", *BLOCK_NAMES, "final_conv", "head")
    stage_of_block = [f"stage{s + 1}" for s, r in enumerate(STAGE_REPEATS) for _ in range(r)]
    assert len(stage_of_block) == 16
    variables = _abstract_variables(spec)
    checked = 0
    for collection in ("params", "batch_stats"):
        for path, _ in _paths(variables[collection]):
            top = path.split("/")[0]
            expected = stage_of_block[int(top[5:])] if top.startswith("block") else top
            assert _group_by_rules(spec.group_rules, path) == expected, path
            checked += 1
    assert checked == 245 + 2  # every tensor of the .pth but the counters, fresh head
    # A per-group train mapping keyed by these group names drives the whole net.
    train = {group: group == "stage3" for group in spec.group_names}
    out = jax.eval_shape(
        lambda v, x: spec.net.apply(v, x, train=train, mutable=["batch_stats"]),
        variables, jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32))
    assert out[0].shape == (2, 5)


@needs_lite0
def test_batch_norm_updates_running_stats_only_in_the_groups_that_train(imagenet):
    _, variables, _ = imagenet
    x = _batch(96)

    def changed(train, spec):
        _, updates = jax.jit(lambda v, x: spec.net.apply(v, x, train=train, mutable=["batch_stats"]))(variables, x)
        old, new = dict(_paths(variables["batch_stats"])), dict(_paths(updates["batch_stats"]))
        assert old.keys() == new.keys()
        return {path for path in old if not np.array_equal(np.asarray(old[path]), np.asarray(new[path]))}

    by_block = efficientnet_lite0(1000, input_size=96, imagenet_head=True)
    all_stats = {path for path, _ in _paths(variables["batch_stats"])}
    assert changed(True, by_block) == all_stats
    assert changed(False, by_block) == set()
    # Stage granularity: only stage2 (= block1, block2) trains.
    by_stage = efficientnet_lite0(1000, input_size=96, granularity="stage", imagenet_head=True)
    train = {group: group == "stage2" for group in by_stage.group_names}
    assert changed(train, by_stage) == {p for p in all_stats if p.split("/")[0] in ("block1", "block2")}


@needs_lite0
def test_weight_files_that_do_not_fit_lite0_are_refused_naming_the_file_and_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    state = torch.load(lite0_weights_path(), map_location="cpu")

    missing = dict(state)
    del missing["_blocks.7._depthwise_conv.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"missing\.pth.*'_blocks\.7\._depthwise_conv\.weight'"):
        efficientnet_lite0(10, tmp_path / "missing.pth")

    extra = dict(state, **{"_blocks.16._bn1.weight": torch.ones(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"extra\.pth.*unexpected.*'_blocks\.16\._bn1\.weight'"):
        efficientnet_lite0(10, tmp_path / "extra.pth")

    reshaped = dict(state, **{"_conv_head.weight": torch.zeros(1280, 320, 3, 3)})
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(UserError, match=r"reshaped\.pth.*'_conv_head\.weight'.*\(1280, 320, 3, 3\)"):
        efficientnet_lite0(10, tmp_path / "reshaped.pth")

    # The ImageNet classifier is only required for the ImageNet head.
    headless = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    torch.save(headless, tmp_path / "headless.pth")
    assert efficientnet_lite0(10, tmp_path / "headless.pth").pretrained == str(tmp_path / "headless.pth")
    with pytest.raises(UserError, match=r"headless\.pth.*'_fc\.weight'"):
        efficientnet_lite0(10, tmp_path / "headless.pth", imagenet_head=True)

    for resnet in sorted(CIFAR_RESNET_WEIGHTS.glob("resnet20-*.th"))[:1]:
        with pytest.raises(UserError, match=re.escape(resnet.name)):
            efficientnet_lite0(10, resnet)


@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 15), (5, 1, 7), (5, 2, 12), (7, 1, 9)])
def test_shifted_sum_depthwise_conv_equals_the_grouped_convolution_with_gradients(kernel, stride, size):
    x = jax.random.normal(jax.random.key(1), (2, size, size, 8))
    variables = {"params": {"kernel": jax.random.normal(jax.random.key(2), (kernel, kernel, 1, 8))}}

    def run(impl):
        def loss(v, x):
            y = DepthwiseConv(kernel, stride, impl=impl).apply(v, x)
            return jnp.sum(jnp.sin(y)), y
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        (_, y), grads = step(variables, x)
        return y, grads

    with jax.default_matmul_precision("float32"):
        (y_shift, g_shift), (y_group, g_group) = run("shifted"), run("grouped")
    assert y_shift.shape == y_group.shape == (2, -(-size // stride), -(-size // stride), 8)
    np.testing.assert_allclose(y_shift, y_group, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_shift), jax.tree.leaves(g_group)):
        np.testing.assert_allclose(a, b, atol=1e-4)


@needs_lite0
def test_default_lite0_weights_is_the_installed_package_file():
    assert default_lite0_weights() == lite0_weights_path()


def test_unknown_granularity_is_a_user_error():
    with pytest.raises(UserError, match="granularity 'layer'"):
        efficientnet_lite0(10, granularity="layer")
