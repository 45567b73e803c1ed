"""`auto-rgn`: Auto-RGN from Surgical Fine-Tuning (Lee et al., ICLR 2023).

Every parameter trains, but each tensor's learning rate is scaled by its relative
gradient norm RGN = ||g|| / ||w||, normalised by the largest RGN over all tensors, so
the multipliers lie in [0, 1] and the most "surprised" tensor gets exactly 1.

Choices (documented, since the paper leaves them open for this setting):
- Recomputed at the start of every epoch from the gradient of the *first batch of that
  epoch* (the same batch whose update it then scales), and held for the rest of the epoch.
- A tensor with ||w|| = 0 (a freshly zero-initialised bias, e.g. of the new head) has an
  undefined (infinite) RGN: it gets multiplier 1 and is left out of the normalising
  maximum, so that it cannot freeze every pretrained tensor. If every gradient is zero
  all multipliers are 1.
- The multiplier scales the optimizer's final update (after momentum / Adam and weight
  decay), i.e. it is a per-tensor learning-rate factor. It is an optax
  GradientTransformation that takes the multiplier pytree as an update argument, so
  recomputing it never recompiles the train step.
- Budget and recipe: the shared final-training recipe (final.epochs, final.learning_rate,
  [finetune] optimizer, batch plan), with every BatchNorm in training mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from deft_jax.finetune import augment_batch, batch_plan, cross_entropy, make_optimizer
from deft_jax.groups import group_of
from deft_jax.methods.common import MethodContext, MethodResult, scores


def _norm(x) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))))


def rgn_multipliers(grads, params):
    """Per-tensor ||g|| / ||w|| divided by its maximum over tensors: a pytree of scalars
    in [0, 1] with maximum exactly 1 (zero-norm tensors: 1, see the module docstring)."""
    g_norm = jax.tree.map(_norm, grads)
    w_norm = jax.tree.map(_norm, params)
    rgn = jax.tree.map(lambda g, w: jnp.where(w > 0, g / jnp.where(w > 0, w, 1.0), 0.0), g_norm, w_norm)
    top = jnp.max(jnp.stack(jax.tree.leaves(rgn)))
    safe = jnp.where(top > 0, top, 1.0)

    def normalise(r, w):
        m = jnp.clip(r / safe, 0.0, 1.0)
        m = jnp.where(r >= top, 1.0, m)  # exactly 1 at the maximum, whatever the rounding
        return jnp.where((w > 0) & (top > 0), m, 1.0)

    return jax.tree.map(normalise, rgn, w_norm)


def scale_by_multipliers() -> optax.GradientTransformationExtraArgs:
    """updates * multipliers (one scalar per tensor), the multipliers given to `update` as
    the keyword argument `multipliers` - data, not part of the compiled program."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, multipliers, **extra):
        del params, extra
        return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates, multipliers), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_step(spec, tx):
    net = spec.net

    @jax.jit
    def step(params, batch_stats, opt_state, multipliers, refresh, x, y):
        def loss_fn(p):
            logits, updated = net.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                        mutable=["batch_stats"])
            return cross_entropy(logits, y), updated["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        fresh = rgn_multipliers(grads, params)
        multipliers = jax.tree.map(lambda f, m: jnp.where(refresh, f, m), fresh, multipliers)
        updates, opt_state = tx.update(grads, opt_state, params, multipliers=multipliers)
        return optax.apply_updates(params, updates), new_stats, opt_state, multipliers, loss

    return step


def by_group(multipliers, rules) -> dict[str, float]:
    """Mean multiplier of each group's tensors."""
    flat = traverse_util.flatten_dict(jax.device_get(multipliers))
    groups: dict[str, list[float]] = {}
    for path, m in flat.items():
        groups.setdefault(group_of("/".join(path), rules), []).append(float(m))
    return {g: round(float(np.mean(v)), 4) for g, v in groups.items()}


def run(ctx: MethodContext) -> MethodResult:
    cfg, spec, data = ctx.cfg, ctx.spec, ctx.data
    key = ("auto-rgn", id(spec), repr(cfg.finetune), cfg.final.learning_rate)
    if key not in ctx.programs.programs:
        tx = optax.chain(make_optimizer(cfg.finetune, cfg.final.learning_rate), scale_by_multipliers())
        ctx.programs.programs[key] = (tx, make_step(spec, tx))
    tx, step = ctx.programs.programs[key]

    params, batch_stats = ctx.variables["params"], ctx.variables["batch_stats"]
    opt_state = tx.init(params)
    multipliers = jax.tree.map(lambda _: jnp.ones((), jnp.float32), params)
    a = data.arrays
    steps_per_epoch = len(a.x_train) // min(cfg.finetune.batch_size, len(a.x_train))
    rng = np.random.default_rng([cfg.seed, 7])
    per_epoch, losses = [], []
    for i, idx in enumerate(batch_plan(len(a.x_train), cfg.finetune.batch_size, cfg.final.epochs, cfg.seed)):
        refresh = i % steps_per_epoch == 0
        xb = augment_batch(a.x_train[idx], cfg.finetune, rng)
        params, batch_stats, opt_state, multipliers, loss = step(
            params, batch_stats, opt_state, multipliers, jnp.asarray(refresh),
            jnp.asarray(xb), jnp.asarray(a.y_train[idx]))
        if refresh:
            per_epoch.append(by_group(multipliers, spec.group_rules))
        losses.append(float(loss))
    trained = {"params": params, "batch_stats": batch_stats}
    tuner = ctx.programs.tuner(spec, cfg.finetune, cfg.final.learning_rate, cfg.final.epochs)
    names = data.class_names
    return MethodResult(
        test=scores(tuner.logits(trained, data.x_test), data.y_test, names),
        val=scores(tuner.logits(trained, a.x_val), a.y_val, names),
        trainable_fraction=1.0,
        extra={"multipliers_by_group_per_epoch": per_epoch,
               "final_loss_first_last": [losses[0], losses[-1]] if losses else None})
