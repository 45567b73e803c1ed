"""The blocks of the MobileNetV2 / EfficientNet family: conv + BN + activation (stems and
final convs) and the MBConv (inverted residual) block.

`padding` is "torch" (PyTorch's symmetric `k // 2`, torchvision/timm models) or "same"
(TensorFlow 'SAME' from the static input shape, EfficientNet-Lite). BatchNorm momentum is
0.1 (PyTorch semantics); its epsilon is a field.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from deft_jax.models.convolutions import DepthwiseConv, same_conv, torch_conv
from deft_jax.models.layers import GatedBatchNorm, TrainFlag

PADDINGS = ("torch", "same")
BN_MOMENTUM = 0.1
MBCONV_BN_NAMES = ("expand_bn", "depthwise_bn", "project_bn")  # MBConv's default BN names


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}: choose from {', '.join(PADDINGS)}")


def _conv(x, features: int, kernel: int, stride: int, padding: str, *, name: str,
          use_bias: bool = False):
    """`padding`-style conv; call inside a compact method."""
    conv = same_conv if padding == "same" else torch_conv
    return conv(x, features, kernel, stride, name=name, use_bias=use_bias)


def _bn(name: str, epsilon: float) -> GatedBatchNorm:
    return GatedBatchNorm(momentum=BN_MOMENTUM, epsilon=epsilon, name=name)


class ConvBnAct(nn.Module):
    """conv kxk (no bias) + BN + activation; parameters `conv`, `bn`."""

    features: int
    kernel: int = 3
    stride: int = 1
    activation: Callable = jax.nn.relu6
    padding: str = "torch"
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        _check_padding(self.padding)
        x = _conv(x, self.features, self.kernel, self.stride, self.padding, name="conv")
        return self.activation(_bn("bn", self.bn_epsilon)(x, train))


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand + BN + act], depthwise kxk + BN + act, [squeeze-excite],
    1x1 project + BN, identity skip when stride 1 and in == out.

    se_reduction: None for no squeeze-excitation, else SE (global mean, 1x1 conv to
    max(1, in_features // se_reduction) + act, 1x1 conv back + sigmoid gate; convs with
    bias, parameters `se_reduce`, `se_expand`). Conv parameters are `expand_conv`,
    `depthwise_conv`, `project_conv`; `bn_names` names the three BNs in that order.
    """

    in_features: int
    out_features: int
    kernel: int
    stride: int
    expand_ratio: int
    activation: Callable = jax.nn.relu6
    se_reduction: int | None = None
    padding: str = "torch"
    bn_epsilon: float = 1e-5
    bn_names: tuple[str, str, str] = MBCONV_BN_NAMES

    @nn.compact
    def __call__(self, x, train: TrainFlag):
        _check_padding(self.padding)
        expand_bn, depthwise_bn, project_bn = self.bn_names
        act = self.activation
        inputs = x
        hidden = self.in_features * self.expand_ratio
        if self.expand_ratio != 1:
            x = _conv(x, hidden, 1, 1, self.padding, name="expand_conv")
            x = act(_bn(expand_bn, self.bn_epsilon)(x, train))
        pad = self.kernel // 2 if self.padding == "torch" else None
        x = DepthwiseConv(self.kernel, self.stride, pad=pad, name="depthwise_conv")(x)
        x = act(_bn(depthwise_bn, self.bn_epsilon)(x, train))
        if self.se_reduction is not None:
            squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
            reduced = max(1, self.in_features // self.se_reduction)
            squeezed = act(_conv(squeezed, reduced, 1, 1, self.padding, name="se_reduce",
                                 use_bias=True))
            x = x * jax.nn.sigmoid(_conv(squeezed, hidden, 1, 1, self.padding,
                                         name="se_expand", use_bias=True))
        x = _conv(x, self.out_features, 1, 1, self.padding, name="project_conv")
        x = _bn(project_bn, self.bn_epsilon)(x, train)
        if self.stride == 1 and self.in_features == self.out_features:
            x = x + inputs
        return x
