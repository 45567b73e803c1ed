"""Convolutions shared by the ImageNet backbones: depthwise convolution, padding rules.

`same_padding` / `same_conv` are TensorFlow's "SAME" rule (EfficientNet-Lite); the
torchvision/timm models use PyTorch's symmetric `padding=k // 2` (`torch_conv`).
`DepthwiseConv` runs as a fused sum of shifted slices on CPU (XLA's grouped convolution is
several times slower there) and as a grouped convolution elsewhere; on CPU a 1x1 convolution
runs as one matrix product (`pointwise_as_dot`: up to 5x faster per layer, forward and
backward, at Lite0's shapes; `benchmarks/conv_lowering.py`). Parameters are the same either
way.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding of one spatial axis: output ceil(size / stride), extra pixel after."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


def _is_nhwc_hwio(lhs, rhs, dimension_numbers) -> bool:
    wanted = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    given = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return given == wanted


def pointwise_as_dot(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                     dimension_numbers=None, feature_group_count: int = 1, precision=None,
                     preferred_element_type=None):
    """`lax.conv_general_dilated`, with an unpadded, undilated, ungrouped 1x1 NHWC/HWIO
    convolution computed as one `dot_general` over (N*H*W, Cin) x (Cin, Cout) (a strided one
    takes every stride-th pixel first); every other convolution goes to
    `lax.conv_general_dilated` unchanged. The same arithmetic: XLA:CPU runs the matrix product
    several times faster than its convolution at these shapes."""
    # a 1x1 kernel's "SAME" padding is zero on every axis, as "VALID" is
    pads = [(0, 0)] * (lhs.ndim - 2) if padding in ("VALID", "SAME") else padding
    pointwise = (lhs.ndim == 4 and rhs.shape[:2] == (1, 1) and feature_group_count == 1
                 and not isinstance(pads, str) and all(tuple(p) == (0, 0) for p in pads)
                 and all(d == 1 for d in (lhs_dilation or (1, 1)))
                 and all(d == 1 for d in (rhs_dilation or (1, 1)))
                 and dimension_numbers is not None and _is_nhwc_hwio(lhs, rhs, dimension_numbers))
    if not pointwise:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    sh, sw = window_strides
    if (sh, sw) != (1, 1):
        lhs = lhs[:, ::sh, ::sw, :]
    return jax.lax.dot_general(lhs, rhs[0, 0], (((3,), (0,)), ((), ())), precision=precision,
                               preferred_element_type=preferred_element_type)


def conv_lowering():
    """What `nn.Conv` computes convolutions with on this backend (its `conv_general_dilated`
    field): `pointwise_as_dot` on CPU, XLA's convolution (None: flax's default) elsewhere."""
    return pointwise_as_dot if jax.default_backend() == "cpu" else None


def _depthwise_taps(x, k: int, stride: int, oh: int, ow: int):
    """The k*k strided slices of padded `x` that output pixel (h, w) reads at tap (i, j)."""
    n, _, _, c = x.shape
    return [jax.lax.slice(x, (0, i, j, 0),
                          (n, i + stride * (oh - 1) + 1, j + stride * (ow - 1) + 1, c),
                          (1, stride, stride, 1))
            for i in range(k) for j in range(k)]


def shifted_sum(x, kernel, stride: int, padding):
    """Depthwise conv as a sum of k*k strided slices times per-channel weights, with
    autodiff's gradient (`padding`: ((top, bottom), (left, right))).

    The same arithmetic as a grouped convolution, written as elementwise ops that XLA fuses.
    On CPU it is 10-70x faster per layer than XLA's grouped convolution (forward and
    backward) and makes a whole Lite0 train step ~4x faster, at ~1.7x the compile time.
    """
    k = kernel.shape[0]
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    n, h, w, c = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    out = None
    for t, tap in enumerate(_depthwise_taps(x, k, stride, oh, ow)):
        term = tap * kernel[t // k, t % k, 0]
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def shifted_sum_variadic_grad(x, kernel, stride: int, padding):
    """`shifted_sum` with another kernel gradient: what `DepthwiseConv` runs on CPU.

    Its kernel gradient is one variadic reduction over the batch axis (every tap's
    product summed in one pass) and then over the pixels: autodiff's k*k separate reductions
    of sliced products run several times slower on XLA:CPU (`benchmarks/depthwise_gradient.py`).
    """
    return shifted_sum(x, kernel, stride, padding)


def _shifted_fwd(x, kernel, stride, padding):
    return shifted_sum(x, kernel, stride, padding), (x, kernel)


def _shifted_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    _, pull_x = jax.vjp(lambda xx: shifted_sum(xx, kernel, stride, padding), x)
    (dx,) = pull_x(dy)
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    products = [tap * dy for tap in _depthwise_taps(xp, k, stride, dy.shape[1], dy.shape[2])]
    zeros = [jnp.zeros((), dy.dtype)] * len(products)

    def add(a, b):
        return tuple(u + v for u, v in zip(a, b))

    per_pixel = jax.lax.reduce(products, zeros, add, (0,))
    per_tap = jax.lax.reduce(list(per_pixel), zeros, add, (0, 1))
    dkernel = jnp.stack(per_tap).reshape(kernel.shape).astype(kernel.dtype)
    return dx, dkernel


shifted_sum_variadic_grad.defvjp(_shifted_fwd, _shifted_bwd)


class DepthwiseConv(nn.Module):
    """Depthwise conv (bias optional) with static TF-SAME or PyTorch symmetric padding;
    parameters as `nn.Conv` with `feature_group_count=channels` (kernel (k, k, 1, C)).

    impl: "grouped" (lax grouped convolution), "shifted" (`shifted_sum_variadic_grad`) or
    "auto": shifted on CPU, where XLA's grouped convolution is very slow, grouped elsewhere.
    """

    kernel_size: int
    stride: int = 1
    impl: str = "auto"
    pad: int | None = None  # None: TF-SAME; an int: PyTorch symmetric padding
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        k, s, channels = self.kernel_size, self.stride, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, channels),
                            jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel)
        if self.pad is None:
            padding = [same_padding(x.shape[1], k, s), same_padding(x.shape[2], k, s)]
        else:
            padding = [(self.pad, self.pad), (self.pad, self.pad)]
        impl = self.impl
        if impl == "auto":
            impl = "shifted" if jax.default_backend() == "cpu" else "grouped"
        if impl == "shifted":
            y = shifted_sum_variadic_grad(x, kernel, s, tuple(tuple(p) for p in padding))
        elif impl == "grouped":
            y = jax.lax.conv_general_dilated(
                x, kernel, (s, s), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=channels)
        else:
            raise ValueError(f"unknown depthwise impl {impl!r}")
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return y


def torch_conv(x, features: int, kernel: int, stride: int = 1, *, name: str,
               pad: int | None = None, use_bias: bool = False):
    """`nn.Conv2d(cin, features, kernel, stride, padding=pad)` in NHWC; call inside a compact
    method. `pad` defaults to PyTorch's usual `kernel // 2`."""
    pad = kernel // 2 if pad is None else pad
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=[(pad, pad), (pad, pad)],
                   use_bias=use_bias, conv_general_dilated=conv_lowering(), name=name)(x)


def same_conv(x, features: int, kernel: int, stride: int = 1, *, name: str,
              use_bias: bool = False):
    """`nn.Conv` with static TF-SAME padding (from `x`'s shape) in NHWC; call inside a compact
    method."""
    padding = [same_padding(x.shape[1], kernel, stride), same_padding(x.shape[2], kernel, stride)]
    return nn.Conv(features, (kernel, kernel), (stride, stride), padding=padding,
                   use_bias=use_bias, conv_general_dilated=conv_lowering(), name=name)(x)


def adaptive_avg_pool(x, out_h: int, out_w: int):
    """`nn.AdaptiveAvgPool2d((out_h, out_w))` in NHWC: bin i spans
    [floor(i * H / out_h), ceil((i + 1) * H / out_h)), bins may overlap or repeat."""
    h, w = x.shape[1], x.shape[2]
    rows = []
    for i in range(out_h):
        r0, r1 = (i * h) // out_h, -(-((i + 1) * h) // out_h)
        cols = []
        for j in range(out_w):
            c0, c1 = (j * w) // out_w, -(-((j + 1) * w) // out_w)
            cols.append(jnp.mean(x[:, r0:r1, c0:c1, :], axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)
