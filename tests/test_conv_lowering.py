"""A 1x1 convolution computed as a matrix product (`pointwise_as_dot`, the CPU lowering of
`nn.Conv` in the ImageNet backbones) is the same function as XLA's convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deft_jax.models.convolutions import conv_lowering, pointwise_as_dot


def _conv_pair(kernel, stride, padding, use_bias=False):
    ref = nn.Conv(12, (kernel, kernel), (stride, stride), padding=padding, use_bias=use_bias)
    dot = nn.Conv(12, (kernel, kernel), (stride, stride), padding=padding, use_bias=use_bias,
                  conv_general_dilated=pointwise_as_dot)
    return ref, dot


def _primitives(fn, *args):
    return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).jaxpr.eqns}


@pytest.mark.parametrize("stride,padding,size", [(1, "SAME", 9), (2, [(0, 0), (0, 0)], 9),
                                                 (2, "SAME", 8), (1, "VALID", 5)])
def test_a_pointwise_conv_as_a_matrix_product_equals_the_convolution_with_gradients(stride, padding, size):
    x = jax.random.normal(jax.random.key(0), (3, size, size, 16))
    ref, dot = _conv_pair(1, stride, padding, use_bias=True)
    variables = ref.init(jax.random.key(1), x)

    def run(module):
        def loss(v, x):
            y = module.apply(v, x)
            return jnp.sum(jnp.sin(y)), y
        (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables, x)
        return y, grads

    with jax.default_matmul_precision("float32"):
        (y_ref, g_ref), (y_dot, g_dot) = run(ref), run(dot)
    assert y_dot.shape == y_ref.shape == (3, -(-size // stride), -(-size // stride), 12)
    np.testing.assert_allclose(y_dot, y_ref, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_dot), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert "dot_general" in _primitives(lambda v: dot.apply(v, x), variables)
    assert "conv_general_dilated" not in _primitives(lambda v: dot.apply(v, x), variables)


@pytest.mark.parametrize("kernel,padding", [(3, [(1, 1), (1, 1)]), (1, [(1, 1), (1, 1)])])
def test_convolutions_that_are_not_unpadded_1x1_stay_xla_convolutions(kernel, padding):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    ref, dot = _conv_pair(kernel, 1, padding)
    variables = ref.init(jax.random.key(1), x)
    assert "conv_general_dilated" in _primitives(lambda v: dot.apply(v, x), variables)
    np.testing.assert_array_equal(dot.apply(variables, x), ref.apply(variables, x))


def test_grouped_and_nchw_pointwise_convolutions_go_to_xla_unchanged():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 8))
    grouped = nn.Conv(8, (1, 1), feature_group_count=4, conv_general_dilated=pointwise_as_dot)
    variables = grouped.init(jax.random.key(1), x)
    assert "conv_general_dilated" in _primitives(lambda v: grouped.apply(v, x), variables)
    lhs, rhs = jnp.ones((2, 8, 5, 5)), jnp.ones((4, 8, 1, 1))  # NCHW / OIHW
    out = pointwise_as_dot(lhs, rhs, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    np.testing.assert_array_equal(out, jax.lax.conv_general_dilated(
        lhs, rhs, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")))


def test_the_cpu_backend_lowers_pointwise_convs_to_matrix_products():
    assert jax.default_backend() != "cpu" or conv_lowering() is pointwise_as_dot
    assert jax.default_backend() == "cpu" or conv_lowering() is None
