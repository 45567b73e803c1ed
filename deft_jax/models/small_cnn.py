"""A small CNN trained from scratch: the tiny test model and the `scratch` baseline."""

from __future__ import annotations

import functools

import flax.linen as nn

from deft_jax.models.base import ModelSpec, StagedNet, stage_rules
from deft_jax.models.layers import ClassifierHead, GatedBatchNorm, TrainFlag


class ConvBnRelu(nn.Module):
    """3x3 conv (stride 1) + BN + ReLU, optionally followed by 2x2 max-pool."""

    features: int
    pool: bool = False

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, name="conv")(x)
        x = nn.relu(GatedBatchNorm(name="bn")(x, train))
        if self.pool:
            x = nn.max_pool(x, (2, 2), (2, 2))
        return x


def small_cnn(num_classes: int, input_size: int = 32, width: int = 16,
              num_convs: int = 4) -> ModelSpec:
    """`num_convs` conv stages (width doubling every second stage) + head."""
    stages = []
    for i in range(num_convs):
        features = width * 2 ** (i // 2)
        stages.append((f"conv{i + 1}",
                       functools.partial(ConvBnRelu, features=features, pool=i % 2 == 1)))
    stages.append(("head", functools.partial(ClassifierHead, num_classes=num_classes)))
    names = [n for n, _ in stages]
    return ModelSpec(
        name="small_cnn", net=StagedNet(tuple(stages)), input_size=input_size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), group_rules=stage_rules(names))
