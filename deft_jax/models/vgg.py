"""VGG-16 and VGG-16-BN, torchvision layout.

    13 conv 3x3 layers (padding 1, with bias; BN after each in VGG-16-BN) + ReLU, a 2x2
    max-pool after the last conv of each of the 5 stages (64, 128, 256, 512, 512 channels);
    adaptive average pool to 7x7, fc6 (25088 -> 4096) + ReLU, fc7 (4096 -> 4096) + ReLU,
    and a fresh linear classifier (torchvision's `classifier.6`).

torchvision's two dropout layers are left out (they are inactive in eval mode; fine-tuning
here runs without them). The 7x7 pool makes any input size >= 32 px work, as in torchvision
(small inputs are pooled to 1x1 and repeated to 7x7). Features are flattened in PyTorch's
channel-major order so fc6 loads without reshuffling.

Stages: `conv1_1` ... `conv5_3` (each conv layer), `fc6`, `fc7`, `head`; granularity
"stage" groups them into `stage1` ... `stage5`, `classifier` (fc6 + fc7) and `head`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp

from deft_jax.models.convolutions import adaptive_avg_pool, torch_conv
from deft_jax.models.layers import GatedBatchNorm, LinearHead, TrainFlag
from deft_jax.models.staged_spec import Stage, staged_spec
from deft_jax.models.weight_layout import Entry, LayoutBuilder

STAGE_WIDTHS = (64, 128, 256, 512, 512)
STAGE_CONVS = (2, 2, 3, 3, 3)
HIDDEN = 4096


class VggConv(nn.Module):
    features: int
    batch_norm: bool
    pool: bool

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        x = torch_conv(x, self.features, 3, name="conv", use_bias=True)
        if self.batch_norm:
            x = GatedBatchNorm(momentum=0.1, epsilon=1e-5, name="bn")(x, train)
        x = nn.relu(x)
        return nn.max_pool(x, (2, 2), (2, 2)) if self.pool else x


class VggFc(nn.Module):
    """[adaptive 7x7 pool + channel-major flatten] + linear + ReLU."""

    features: int
    flatten: bool

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        del train
        if self.flatten:
            x = adaptive_avg_pool(x, 7, 7)
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.features, name="fc")(x))


def _conv_names() -> list[tuple[int, str, bool]]:
    """(stage 1..5, stage name, max-pool after) per conv layer."""
    return [(s, f"conv{s}_{i + 1}", i == n - 1)
            for s, n in enumerate(STAGE_CONVS, start=1) for i in range(n)]


def torch_layout(batch_norm: bool) -> list[Entry]:
    """torchvision `vgg16` / `vgg16_bn` state-dict keys."""
    b = LayoutBuilder()
    index = 0
    for _, name, pool in _conv_names():
        b.conv(f"features.{index}", (name, "conv"), bias=True)
        if batch_norm:
            b.bn(f"features.{index + 1}", (name, "bn"))
        index += (3 if batch_norm else 2) + (1 if pool else 0)
    b.dense("classifier.0", ("fc6", "fc"))
    b.dense("classifier.3", ("fc7", "fc"))
    b.dense("classifier.6", ("head", "fc"), head=True)
    return b.entries


def vgg16(num_classes: int, weights: str | Path | None = None, input_size: int = 224,
          granularity: str = "block", batch_norm: bool = False, load_head: bool = False,
          width_divisor: int = 1):
    """VGG-16 (`batch_norm=True`: VGG-16-BN) with a fresh `num_classes` head.

    `width_divisor` divides every width (for fast tests of the converter; keys unchanged).
    """
    stages = []
    for stage, name, pool in _conv_names():
        stages.append(Stage(name, functools.partial(
            VggConv, features=STAGE_WIDTHS[stage - 1] // width_divisor, batch_norm=batch_norm,
            pool=pool), f"stage{stage}"))
    hidden = HIDDEN // width_divisor
    stages.append(Stage("fc6", functools.partial(VggFc, features=hidden, flatten=True), "classifier"))
    stages.append(Stage("fc7", functools.partial(VggFc, features=hidden, flatten=False), "classifier"))
    stages.append(Stage("head", functools.partial(LinearHead, num_classes=num_classes), "head"))
    name = "vgg16_bn" if batch_norm else "vgg16"
    return staged_spec(name, stages, granularity=granularity, input_size=input_size,
                       layouts={"torchvision": torch_layout(batch_norm)}, weights=weights,
                       load_head=load_head, min_input_size=32)
