"""EfficientNet-B0 (timm `efficientnet_b0`; torchvision's `efficientnet_b0` is the same network).

    stem:  conv 3x3/2 (3 -> 32) + BN + SiLU
    16 MBConv blocks with squeeze-excitation, rows (expand, kernel, stride, out, repeats)
           (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3) (6,5,2,192,4)
           (6,3,1,320,1): [1x1 expand + BN + SiLU], depthwise kxk + BN + SiLU,
           SE (global mean, 1x1 conv to in/4 + SiLU, 1x1 conv back + sigmoid gate),
           1x1 project + BN, identity skip when stride 1 and in == out
    final: conv 1x1 (320 -> 1280) + BN + SiLU;  head: global average pool + fresh linear

PyTorch symmetric padding k // 2 (timm's default `efficientnet_b0`, not the `tf_` variant),
BatchNorm epsilon 1e-5; drop-path and dropout are inactive in eval mode and left out.
Both key namings are accepted and detected: timm (`conv_stem`, `blocks.1.0.conv_pw`,
`blocks.1.0.se.conv_reduce` ...) and torchvision (`features.0.0`, `features.2.0.block.0.0`,
`features.2.0.block.2.fc1` ...). Stages: `stem`, `block0` ... `block15`, `final_conv`,
`head`; granularity "stage" groups the blocks by row into `stage1` ... `stage7`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax

from deft_jax.models.layers import ClassifierHead
from deft_jax.models.mbconv import ConvBnAct, MBConv
from deft_jax.models.mbconv_layout import MBConvKeys, mbconv_layout
from deft_jax.models.staged_spec import Stage, staged_spec
from deft_jax.models.weight_layout import Entry

ROWS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, LAST = 32, 1280
SE_REDUCTION = 4  # squeeze to in_features // 4


def _blocks() -> list[tuple[int, int, int, int, int, int, int]]:
    """(row 1..7, index in row, in, out, kernel, stride, expand) per block."""
    blocks, cin = [], STEM
    for row, (expand, kernel, stride, cout, repeats) in enumerate(ROWS, start=1):
        for j in range(repeats):
            blocks.append((row, j, cin, cout, kernel, stride if j == 0 else 1, expand))
            cin = cout
    return blocks


def timm_layout() -> list[Entry]:
    blocks = []
    for i, (row, j, _, _, _, _, expand) in enumerate(_blocks()):
        if expand == 1:  # DepthwiseSeparableConv
            parts = {"depthwise": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}
        else:  # InvertedResidual
            parts = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"),
                     "project": ("conv_pwl", "bn3")}
        blocks.append(MBConvKeys(f"block{i}", f"blocks.{row - 1}.{j}", **parts,
                                 se=("se.conv_reduce", "se.conv_expand")))
    return mbconv_layout(("conv_stem", "bn1"), blocks, ("conv_head", "bn2"), "classifier")


def torchvision_layout() -> list[Entry]:
    blocks = []
    for i, (row, j, _, _, _, _, expand) in enumerate(_blocks()):
        k = 0 if expand == 1 else 1  # index of the depthwise conv in the block's Sequential
        blocks.append(MBConvKeys(
            f"block{i}", f"features.{row}.{j}.block", expand=("0.0", "0.1") if k else None,
            depthwise=(f"{k}.0", f"{k}.1"), se=(f"{k + 1}.fc1", f"{k + 1}.fc2"),
            project=(f"{k + 2}.0", f"{k + 2}.1")))
    return mbconv_layout(("features.0.0", "features.0.1"), blocks,
                         ("features.8.0", "features.8.1"), "classifier.1")


def efficientnet_b0(num_classes: int, weights: str | Path | None = None, input_size: int = 224,
                    granularity: str = "block", load_head: bool = False):
    """EfficientNet-B0 with a fresh `num_classes` head; `weights`: a timm or torchvision
    state dict (naming detected)."""
    stages = [Stage("stem", functools.partial(ConvBnAct, features=STEM, stride=2,
                                              activation=jax.nn.silu), "stem")]
    for i, (row, _, cin, cout, kernel, stride, expand) in enumerate(_blocks()):
        stages.append(Stage(f"block{i}", functools.partial(
            MBConv, in_features=cin, out_features=cout, kernel=kernel, stride=stride,
            expand_ratio=expand, activation=jax.nn.silu, se_reduction=SE_REDUCTION), f"stage{row}"))
    stages.append(Stage("final_conv", functools.partial(
        ConvBnAct, features=LAST, kernel=1, activation=jax.nn.silu), "final_conv"))
    stages.append(Stage("head", functools.partial(ClassifierHead, num_classes=num_classes), "head"))
    layouts = {"timm": timm_layout(), "torchvision": torchvision_layout()}
    return staged_spec("efficientnet_b0", stages, granularity=granularity,
                       input_size=input_size, layouts=layouts, weights=weights,
                       load_head=load_head)
