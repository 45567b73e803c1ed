"""MobileNetV2 (width 1.0), torchvision layout.

    stem:  conv 3x3/2 (3 -> 32) + BN + ReLU6                      (`features.0`)
    17 inverted residual blocks (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
           (6,96,3,1) (6,160,3,2) (6,320,1,1): [1x1 expand + BN + ReLU6], depthwise 3x3 +
           BN + ReLU6, 1x1 project + BN, identity skip when stride 1 and in == out
                                                                    (`features.1..17`)
    final: conv 1x1 (320 -> 1280) + BN + ReLU6                      (`features.18`)
    head:  global average pool + fresh linear classifier            (`classifier.1`)

PyTorch padding (k - 1) // 2, BatchNorm epsilon 1e-5. Stages: `stem`, `block1` ...
`block17`, `final_conv`, `head`; granularity "stage" groups the blocks by the seven
(t, c, n, s) rows into `stage1` ... `stage7`.
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

SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM, LAST = 32, 1280


def _blocks() -> list[tuple[int, int, int, int, int]]:
    """(stage 1..7, in, out, stride, expand) per inverted residual block."""
    blocks, cin = [], STEM
    for stage, (t, c, n, s) in enumerate(SETTING, start=1):
        for i in range(n):
            blocks.append((stage, cin, c, s if i == 0 else 1, t))
            cin = c
    return blocks


def torch_layout() -> list[Entry]:
    """torchvision `mobilenet_v2` state-dict keys."""
    blocks = []
    for i, (_, _, _, _, expand) in enumerate(_blocks(), start=1):
        j = 0 if expand == 1 else 1  # index of the depthwise conv in the block's Sequential
        blocks.append(MBConvKeys(
            f"block{i}", f"features.{i}.conv", expand=("0.0", "0.1") if j else None,
            depthwise=(f"{j}.0", f"{j}.1"), project=(f"{j + 1}", f"{j + 2}")))
    n = len(blocks) + 1
    return mbconv_layout(("features.0.0", "features.0.1"), blocks,
                         (f"features.{n}.0", f"features.{n}.1"), "classifier.1")


def mobilenet_v2(num_classes: int, weights: str | Path | None = None, input_size: int = 224,
                 granularity: str = "block", load_head: bool = False):
    """MobileNetV2 with a fresh `num_classes` head; `weights`: a torchvision state dict."""
    stages = [Stage("stem", functools.partial(ConvBnAct, features=STEM, stride=2,
                                              activation=jax.nn.relu6), "stem")]
    for i, (stage, cin, cout, stride, expand) in enumerate(_blocks(), start=1):
        stages.append(Stage(f"block{i}", functools.partial(
            MBConv, in_features=cin, out_features=cout, kernel=3, stride=stride,
            expand_ratio=expand, activation=jax.nn.relu6), f"stage{stage}"))
    stages.append(Stage("final_conv", functools.partial(
        ConvBnAct, features=LAST, kernel=1, activation=jax.nn.relu6), "final_conv"))
    stages.append(Stage("head", functools.partial(ClassifierHead, num_classes=num_classes), "head"))
    return staged_spec("mobilenet_v2", stages, granularity=granularity, input_size=input_size,
                       layouts={"torchvision": torch_layout()}, weights=weights,
                       load_head=load_head)
