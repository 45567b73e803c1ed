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
from deft_jax.models.staged_spec import Stage, staged_spec
from deft_jax.models.weight_layout import Entry, LayoutBuilder

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
    b = LayoutBuilder()
    b.conv("conv_stem", ("stem", "conv"))
    b.bn("bn1", ("stem", "bn"))
    for i, (row, j, _, _, _, _, expand) in enumerate(_blocks()):
        key, stage = f"blocks.{row - 1}.{j}", f"block{i}"
        if expand == 1:  # DepthwiseSeparableConv
            names = {"depthwise": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}
        else:  # InvertedResidual
            names = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"),
                     "project": ("conv_pwl", "bn3")}
        for part in ("expand", "depthwise"):
            if part in names:
                b.conv(f"{key}.{names[part][0]}", (stage, f"{part}_conv"))
                b.bn(f"{key}.{names[part][1]}", (stage, f"{part}_bn"))
        b.conv(f"{key}.se.conv_reduce", (stage, "se_reduce"), bias=True)
        b.conv(f"{key}.se.conv_expand", (stage, "se_expand"), bias=True)
        b.conv(f"{key}.{names['project'][0]}", (stage, "project_conv"))
        b.bn(f"{key}.{names['project'][1]}", (stage, "project_bn"))
    b.conv("conv_head", ("final_conv", "conv"))
    b.bn("bn2", ("final_conv", "bn"))
    b.dense("classifier", ("head", "fc"), head=True)
    return b.entries


def torchvision_layout() -> list[Entry]:
    b = LayoutBuilder()
    b.conv("features.0.0", ("stem", "conv"))
    b.bn("features.0.1", ("stem", "bn"))
    for i, (row, j, _, _, _, _, expand) in enumerate(_blocks()):
        key, stage = f"features.{row}.{j}.block", f"block{i}"
        k = 0
        if expand != 1:
            b.conv(f"{key}.0.0", (stage, "expand_conv"))
            b.bn(f"{key}.0.1", (stage, "expand_bn"))
            k = 1
        b.conv(f"{key}.{k}.0", (stage, "depthwise_conv"))
        b.bn(f"{key}.{k}.1", (stage, "depthwise_bn"))
        b.conv(f"{key}.{k + 1}.fc1", (stage, "se_reduce"), bias=True)
        b.conv(f"{key}.{k + 1}.fc2", (stage, "se_expand"), bias=True)
        b.conv(f"{key}.{k + 2}.0", (stage, "project_conv"))
        b.bn(f"{key}.{k + 2}.1", (stage, "project_bn"))
    b.conv("features.8.0", ("final_conv", "conv"))
    b.bn("features.8.1", ("final_conv", "bn"))
    b.dense("classifier.1", ("head", "fc"), head=True)
    return b.entries


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
