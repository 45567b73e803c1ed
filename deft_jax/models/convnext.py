"""ConvNeXt-Tiny (timm `convnext_tiny`; torchvision's `convnext_tiny` is the same network).

    stem:  conv 4x4/4 (3 -> 96, bias) + LayerNorm
    4 stages of 3, 3, 9, 3 blocks at 96, 192, 384, 768 channels; stages 2-4 start with a
           downsample (LayerNorm + conv 2x2/2). Block: depthwise 7x7 (bias) + LayerNorm +
           linear 4x + GELU + linear back, times a per-channel layer scale, plus the input
    final: global average pool + LayerNorm;  head: fresh linear classifier

No BatchNorm anywhere: every normalisation is a LayerNorm (epsilon 1e-6) over channels,
with parameters only, so a frozen group is simply one whose LayerNorm scale/bias, convs
and layer scales are not updated; `train` flags have no effect on this model. Stochastic
depth is inactive in eval mode and left out.

Both key namings are accepted and detected: timm (`stem.0`, `stages.1.downsample.1`,
`stages.0.blocks.0.mlp.fc1`, `...gamma`, `head.norm`, `head.fc`) and torchvision
(`features.0.0`, `features.2.1`, `features.1.0.block.3`, `...layer_scale` of shape (C,1,1),
`classifier.0`, `classifier.2`). Stages: `stem`, `stage1_0` ..., `stage2_down`,
`stage2_0` ..., `final_norm`, `head`; granularity "stage" groups a stage's downsample and
blocks into `stage1` ... `stage4`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.models.convolutions import DepthwiseConv, torch_conv
from deft_jax.models.layers import LinearHead, TrainFlag
from deft_jax.models.staged_spec import Stage, staged_spec
from deft_jax.models.weight_layout import Entry, LayoutBuilder

DEPTHS = (3, 3, 9, 3)
DIMS = (96, 192, 384, 768)
LN_EPSILON = 1e-6


def _ln(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, name=name)


class ConvNeXtStem(nn.Module):
    @nn.compact
    def __call__(self, x, train: TrainFlag):
        del train
        return _ln("norm")(torch_conv(x, DIMS[0], 4, 4, name="conv", pad=0, use_bias=True))


class Downsample(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        del train
        return torch_conv(_ln("norm")(x), self.features, 2, 2, name="conv", pad=0, use_bias=True)


class ConvNeXtBlock(nn.Module):
    @nn.compact
    def __call__(self, x, train: TrainFlag):
        del train
        c = x.shape[-1]
        y = DepthwiseConv(7, 1, pad=3, use_bias=True, name="conv_dw")(x)
        y = nn.Dense(4 * c, name="fc1")(_ln("norm")(y))
        y = nn.Dense(c, name="fc2")(jax.nn.gelu(y, approximate=False))
        gamma = self.param("gamma", nn.initializers.ones, (c,), jnp.float32)
        return x + gamma * y


class FinalNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: TrainFlag):
        del train
        return _ln("norm")(jnp.mean(x, axis=(1, 2)))


def convnext_layout(stem: str, downsample: Callable[[int], str], block: Callable[[int, int], str],
                    block_parts: tuple[str, str, str, str, str], layer_scale_kind: str,
                    final_norm: str, classifier: str) -> list[Entry]:
    """The state-dict layout of one key naming of ConvNeXt-Tiny.

    stem: the stem's prefix (`.0` conv, `.1` LayerNorm); downsample(s): the prefix of stage
    s's downsample (0-based, s > 0; `.0` LayerNorm, `.1` conv); block(s, j): the prefix of
    block j of stage s; block_parts: the depthwise conv, LayerNorm, fc1, fc2 and layer-scale
    names below a block's prefix; layer_scale_kind: the layer scale's `Entry.kind`;
    final_norm, classifier: the keys of the final LayerNorm and of the linear head."""
    conv_dw, norm, fc1, fc2, layer_scale = block_parts
    b = LayoutBuilder()
    b.conv(f"{stem}.0", ("stem", "conv"), bias=True)
    b.norm(f"{stem}.1", ("stem", "norm"))
    for s, depth in enumerate(DEPTHS):
        if s > 0:
            b.norm(f"{downsample(s)}.0", (f"stage{s + 1}_down", "norm"))
            b.conv(f"{downsample(s)}.1", (f"stage{s + 1}_down", "conv"), bias=True)
        for j in range(depth):
            key, stage = block(s, j), f"stage{s + 1}_{j}"
            b.conv(f"{key}.{conv_dw}", (stage, "conv_dw"), bias=True)
            b.norm(f"{key}.{norm}", (stage, "norm"))
            b.dense(f"{key}.{fc1}", (stage, "fc1"))
            b.dense(f"{key}.{fc2}", (stage, "fc2"))
            b.vector(f"{key}.{layer_scale}", (stage, "gamma"), kind=layer_scale_kind)
    b.norm(final_norm, ("final_norm", "norm"))
    b.dense(classifier, ("head", "fc"), head=True)
    return b.entries


def timm_layout() -> list[Entry]:
    return convnext_layout(
        "stem", lambda s: f"stages.{s}.downsample", lambda s, j: f"stages.{s}.blocks.{j}",
        ("conv_dw", "norm", "mlp.fc1", "mlp.fc2", "gamma"), "vector", "head.norm", "head.fc")


def torchvision_layout() -> list[Entry]:
    return convnext_layout(
        "features.0", lambda s: f"features.{2 * s}", lambda s, j: f"features.{2 * s + 1}.{j}",
        ("block.0", "block.2", "block.3", "block.5", "layer_scale"), "channel_vector",
        "classifier.0", "classifier.2")


def convnext_tiny(num_classes: int, weights: str | Path | None = None, input_size: int = 224,
                  granularity: str = "block", load_head: bool = False):
    """ConvNeXt-Tiny with a fresh `num_classes` head; `weights`: a timm or torchvision state
    dict (naming detected). Input size: a multiple of 32 keeps every downsample exact."""
    stages = [Stage("stem", ConvNeXtStem, "stem")]
    for s, depth in enumerate(DEPTHS):
        group = f"stage{s + 1}"
        if s > 0:
            stages.append(Stage(f"{group}_down", functools.partial(Downsample, features=DIMS[s]), group))
        stages += [Stage(f"{group}_{j}", ConvNeXtBlock, group) for j in range(depth)]
    stages.append(Stage("final_norm", FinalNorm, "final_norm"))
    stages.append(Stage("head", functools.partial(LinearHead, num_classes=num_classes), "head"))
    layouts = {"timm": timm_layout(), "torchvision": torchvision_layout()}
    return staged_spec("convnext_tiny", stages, granularity=granularity, input_size=input_size,
                       layouts=layouts, weights=weights, load_head=load_head, min_input_size=32)
