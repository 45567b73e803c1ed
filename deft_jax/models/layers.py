"""Building blocks shared by all models.

`GatedBatchNorm` is the reason models here do not use `flax.linen.BatchNorm`: its mode
(batch statistics + running-stat update vs. inference with stored statistics) is chosen
per layer group and may be a *traced* value, so one compiled program can train some
population members' groups while others stay frozen.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
# `train` flags are Python bools (static masks) or traced scalars (vmapped populations).
TrainFlag = Any


class GatedBatchNorm(nn.Module):
    """BatchNorm over all but the last axis, PyTorch semantics.

    train=True: normalise with batch statistics and update running statistics with
    `momentum` (PyTorch convention: new = (1 - momentum) * old + momentum * batch, with the
    unbiased batch variance). train=False: normalise with running statistics, which stay
    bit-identical. A traced `train` selects between the two with `jnp.where`.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, train: TrainFlag) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

        def normalise(mean, var):
            return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias

        if train is False:
            return normalise(ra_mean.value, ra_var.value)

        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        n = x.size // features
        unbiased = var * (n / max(n - 1, 1))
        new_mean = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
        new_var = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
        if self.is_initializing():
            return normalise(mean, var)
        if train is True:
            ra_mean.value, ra_var.value = new_mean, new_var
            return normalise(mean, var)
        # Traced flag: both branches are computed, the flag picks one per member; the
        # inference branch uses the statistics from *before* this step.
        flag = jnp.asarray(train) > 0.5
        old_mean, old_var = ra_mean.value, ra_var.value
        ra_mean.value = jnp.where(flag, new_mean, old_mean)
        ra_var.value = jnp.where(flag, new_var, old_var)
        return jnp.where(flag, normalise(mean, var), normalise(old_mean, old_var))


class ClassifierHead(nn.Module):
    """Global average pool + fresh dense layer sized for the target classes."""

    num_classes: int

    @nn.compact
    def __call__(self, x: Array, train: TrainFlag) -> Array:
        del train
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


class LinearHead(nn.Module):
    """Fresh dense layer sized for the target classes, on features already pooled or flattened
    (ConvNeXt after its final norm, VGG after its classifier MLP); parameters `fc`."""

    num_classes: int

    @nn.compact
    def __call__(self, x: Array, train: TrainFlag) -> Array:
        del train
        return nn.Dense(self.num_classes, name="fc")(x)
