"""ResNet-18/34/50 for ImageNet-size inputs, torchvision layout (timm `resnet*` is the same).

    stem:    conv 7x7/2 (3 -> 64) + BN + ReLU + max-pool 3x3/2 (padding 1)
    layer1..layer4: BasicBlocks (18, 34) or Bottlenecks (50; stride on the 3x3 conv, the
             torchvision "v1.5" variant), 64/128/256/512 planes, first block of layer2..4
             stride 2; a 1x1 conv + BN shortcut (`downsample`) where the shape changes
    head:    global average pool + fresh linear classifier

Stages: `stem`, `layer1_0` ... `layer4_{n-1}`, `head`; granularity "stage" groups the
blocks into `layer1` ... `layer4`. State-dict keys are torchvision's (`conv1.weight`,
`layer1.0.bn1.running_mean`, `layer2.0.downsample.0.weight`, `fc.weight`), which timm's
`resnet18/34/50` use unchanged. BatchNorm epsilon 1e-5.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn

from deft_jax.errors import UserError
from deft_jax.models.convolutions import torch_conv
from deft_jax.models.layers import ClassifierHead, GatedBatchNorm, TrainFlag
from deft_jax.models.staged_spec import Stage, staged_spec
from deft_jax.models.weight_layout import Entry, LayoutBuilder

# depth -> (block kind, blocks per layer)
CONFIGS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
           50: ("bottleneck", (3, 4, 6, 3))}
PLANES = (64, 128, 256, 512)


def _bn(name: str) -> GatedBatchNorm:
    return GatedBatchNorm(momentum=0.1, epsilon=1e-5, name=name)


class ResNetStem(nn.Module):
    @nn.compact
    def __call__(self, x, train: TrainFlag):
        x = torch_conv(x, 64, 7, 2, name="conv1")
        x = nn.relu(_bn("bn1")(x, train))
        return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class ResidualBlock(nn.Module):
    """BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x planes)."""

    planes: int
    stride: int
    bottleneck: bool

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        out_features = self.planes * (4 if self.bottleneck else 1)
        if self.bottleneck:
            y = nn.relu(_bn("bn1")(torch_conv(x, self.planes, 1, name="conv1"), train))
            y = nn.relu(_bn("bn2")(torch_conv(y, self.planes, 3, self.stride, name="conv2"), train))
            y = _bn("bn3")(torch_conv(y, out_features, 1, name="conv3"), train)
        else:
            y = nn.relu(_bn("bn1")(torch_conv(x, self.planes, 3, self.stride, name="conv1"), train))
            y = _bn("bn2")(torch_conv(y, self.planes, 3, name="conv2"), train)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_features:
            shortcut = torch_conv(x, out_features, 1, self.stride, name="downsample_conv")
            shortcut = _bn("downsample_bn")(shortcut, train)
        return nn.relu(y + shortcut)


def _blocks(depth: int) -> list[tuple[int, int, int, bool]]:
    """(layer 1..4, index in layer, stride, has downsample) per residual block."""
    kind, counts = CONFIGS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    blocks, in_features = [], 64
    for layer, (count, planes) in enumerate(zip(counts, PLANES), start=1):
        for i in range(count):
            stride = 2 if (i == 0 and layer > 1) else 1
            blocks.append((layer, i, stride, stride != 1 or in_features != planes * expansion))
            in_features = planes * expansion
    return blocks


def torch_layout(depth: int) -> list[Entry]:
    """torchvision (= timm) state-dict keys of ResNet-`depth`."""
    b = LayoutBuilder()
    b.conv("conv1", ("stem", "conv1"))
    b.bn("bn1", ("stem", "bn1"))
    convs = 3 if CONFIGS[depth][0] == "bottleneck" else 2
    for layer, i, _, downsample in _blocks(depth):
        key, stage = f"layer{layer}.{i}", f"layer{layer}_{i}"
        for c in range(1, convs + 1):
            b.conv(f"{key}.conv{c}", (stage, f"conv{c}"))
            b.bn(f"{key}.bn{c}", (stage, f"bn{c}"))
        if downsample:
            b.conv(f"{key}.downsample.0", (stage, "downsample_conv"))
            b.bn(f"{key}.downsample.1", (stage, "downsample_bn"))
    b.dense("fc", ("head", "fc"), head=True)
    return b.entries


def resnet(depth: int, num_classes: int, weights: str | Path | None = None,
           input_size: int = 224, granularity: str = "block", load_head: bool = False):
    """ResNet-`depth` (18, 34, 50) with a fresh `num_classes` head; `weights`: a torchvision
    or timm state dict (.pth/.pt/.safetensors). `load_head` also loads the file's classifier."""
    if depth not in CONFIGS:
        raise UserError(f"unknown ResNet depth {depth}: choose one of 18, 34, 50")
    bottleneck = CONFIGS[depth][0] == "bottleneck"
    stages = [Stage("stem", ResNetStem, "stem")]
    for layer, i, stride, _ in _blocks(depth):
        stages.append(Stage(f"layer{layer}_{i}", functools.partial(
            ResidualBlock, planes=PLANES[layer - 1], stride=stride, bottleneck=bottleneck),
            f"layer{layer}"))
    stages.append(Stage("head", functools.partial(ClassifierHead, num_classes=num_classes), "head"))
    layouts = {"torchvision/timm": torch_layout(depth)}
    return staged_spec(f"resnet{depth}", stages, granularity=granularity, input_size=input_size,
                       layouts=layouts, weights=weights, load_head=load_head, min_input_size=8)

