"""`auto-rgn`: Auto-RGN from Surgical Fine-Tuning (Lee et al., ICLR 2023).

Every parameter trains, but each pretrained tensor's learning rate is scaled by its
relative gradient norm RGN = ||g|| / ||w||, normalised by the largest RGN over the
pretrained tensors, so their multipliers lie in [0, 1] and the most "surprised" one gets
exactly 1. The new classification head is not part of the pretrained network Lee et al.
rank: it trains at the base rate and is left out of the normalisation. (Normalising by a
maximum that includes the freshly initialised head, as this module did before, gave the
backbone 0.01-0.12 of the head's rate: close to a linear probe.)

Choices (documented, since the paper leaves them open for this setting):
- Recomputed at the start of every epoch from the gradient of the *first batch of that
  epoch* (the same batch whose update it then scales), and held for the rest of the epoch.
- A tensor with ||w|| = 0 (a zero-initialised bias) has an undefined (infinite) RGN: it
  gets multiplier 1 and is left out of the normalising maximum. If every gradient is zero
  all multipliers are 1.
- The learning rate: like every method of the experiment, the final recipe's rate, or
  the one of `experiment.learning_rates` that scores best on validation.
- The multiplier scales the optimizer's final update (after momentum / Adam and weight
  decay), i.e. it is a per-tensor learning-rate factor. `scale_by_rgn` wraps the base
  optimizer as one optax GradientTransformation whose state carries the step count and
  the current multipliers, so the method is the core's train step and final-training
  path with a different optimizer (`deft_jax.core.final.train_final`).
- Budget and recipe: the shared final-training recipe (final.epochs, final.learning_rate,
  [finetune] optimizer, batch plan), with every BatchNorm in training mode.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from deft_jax.core.masks import HEAD
from deft_jax.core.optimizer import make_optimizer, scale_leaves
from deft_jax.methods.common import (
    MethodContext,
    MethodResult,
    all_groups,
    fit_with_learning_rates,
)


def _norm(x) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))))


def rgn_multipliers(grads, params, head=None):
    """Per-tensor ||g|| / ||w|| divided by its maximum over the pretrained tensors: a pytree
    of scalars in [0, 1], maximum exactly 1. `head` (a pytree of bools like `params`, True
    for the new head's tensors): those get 1 and do not enter the maximum. Zero-norm
    tensors: 1, see the module docstring."""
    head = jax.tree.map(lambda _: False, params) if head is None else head
    g_norm = jax.tree.map(_norm, grads)
    w_norm = jax.tree.map(_norm, params)
    rgn = jax.tree.map(lambda g, w: jnp.where(w > 0, g / jnp.where(w > 0, w, 1.0), 0.0), g_norm, w_norm)
    ranked = [jnp.where(h, 0.0, r) for r, h in zip(jax.tree.leaves(rgn), jax.tree.leaves(head))]
    top = jnp.max(jnp.stack(ranked))
    safe = jnp.where(top > 0, top, 1.0)

    def normalise(r, w, h):
        m = jnp.clip(r / safe, 0.0, 1.0)
        m = jnp.where(r >= top, 1.0, m)  # exactly 1 at the maximum, whatever the rounding
        return jnp.where(h, 1.0, jnp.where((w > 0) & (top > 0), m, 1.0))

    return jax.tree.map(normalise, rgn, w_norm, head)


class RgnState(NamedTuple):
    count: jax.Array        # steps taken
    multipliers: dict       # one scalar per tensor, held for the epoch
    inner: optax.OptState


def head_tree(params, labels) -> dict:
    """True for the head's tensors, with the structure of `params` (nested, or flat with
    path-tuple keys as the static train step hands them to the optimizer)."""
    flat_labels = traverse_util.flatten_dict(dict(labels))
    if params and all(isinstance(k, tuple) for k in params):
        return {k: flat_labels[k] == HEAD for k in params}
    return traverse_util.unflatten_dict({k: flat_labels[k] == HEAD
                                         for k in traverse_util.flatten_dict(dict(params))})


def scale_by_rgn(inner: optax.GradientTransformation, steps_per_epoch: int,
                 labels: dict | None = None) -> optax.GradientTransformation:
    """`inner`'s updates, each tensor's scaled by its RGN multiplier; the multipliers are
    recomputed from the gradient of the first step of every epoch and held for the epoch.
    `labels` (the model's group label tree) marks the head, which keeps the base rate."""

    def init_fn(params):
        ones = jax.tree.map(lambda _: jnp.ones((), jnp.float32), params)
        return RgnState(jnp.zeros((), jnp.int32), ones, inner.init(params))

    def update_fn(updates, state, params=None):
        refresh = state.count % steps_per_epoch == 0
        fresh = rgn_multipliers(updates, params, None if labels is None else head_tree(params, labels))
        multipliers = jax.tree.map(lambda f, m: jnp.where(refresh, f, m), fresh, state.multipliers)
        scaled, inner_state = inner.update(updates, state.inner, params)
        scaled = scale_leaves(scaled, multipliers)
        return scaled, RgnState(state.count + 1, multipliers, inner_state)

    return optax.GradientTransformation(init_fn, update_fn)


def by_group(multipliers, labels) -> dict[str, float]:
    """Mean multiplier of each group's tensors (`labels`: the group label tree; the
    multipliers as the optimizer state holds them: flat, keyed by parameter path)."""
    flat = jax.device_get(multipliers)
    groups = traverse_util.flatten_dict(labels)
    means: dict[str, list[float]] = {}
    for path, m in flat.items():
        means.setdefault(groups[path], []).append(float(m))
    return {g: round(float(np.mean(v)), 4) for g, v in means.items()}


def run(ctx: MethodContext) -> MethodResult:
    cfg, spec, data = ctx.cfg, ctx.spec, ctx.data
    steps_per_epoch = len(data.arrays.x_train) // min(cfg.finetune.batch_size, len(data.arrays.x_train))

    def tuner_for(learning_rate: float | None):
        tx = scale_by_rgn(make_optimizer(cfg.finetune, learning_rate), steps_per_epoch,
                          spec.layer_groups.labels)
        return ctx.programs.tuner(spec, cfg.finetune, learning_rate, cfg.final.epochs, tx=tx,
                                  tx_key=f"auto-rgn/{steps_per_epoch}")

    result, tuner = fit_with_learning_rates(ctx, all_groups(spec), tuner_for)
    result.mask = None
    result.trainable_fraction = 1.0
    result.extra["multipliers_by_group_last_epoch"] = by_group(tuner.last_state.opt_state.multipliers,
                                                               spec.layer_groups.labels)
    return result
