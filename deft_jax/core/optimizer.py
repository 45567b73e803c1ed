"""The optax side of the training core: the configured optimizer and the transforms a train
step adds to it.

- `make_optimizer`: `[finetune]`'s SGD (momentum) / Adam / AdamW with weight decay.
- Gates (`zero_gated_off`, `gate_updates`, `keep_gated_off_state`): a gated population
  member's frozen leaves get an update of exactly 0 and keep their optimizer state, so
  momentum and weight decay cannot move them.
- `scale_by_leaf`: per-leaf learning-rate multipliers, kept in the optimizer state (traced
  per population member: no recompile per multiplier), as auto-rgn's `scale_by_rgn`
  (`deft_jax.methods.auto_rgn`) keeps its per-tensor multipliers; both scale with
  `scale_leaves`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from deft_jax.config.schema import FineTuneConfig


def make_optimizer(cfg: FineTuneConfig, learning_rate: float | None = None) -> optax.GradientTransformation:
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.optimizer == "sgd":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(lr, momentum=cfg.momentum or None))
    if cfg.optimizer == "adam":
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(lr))
    if cfg.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def zero_gated_off(updates, gates):
    """`updates` with the leaves whose gate (bool or float, possibly traced) is off zeroed."""
    return jax.tree.map(lambda u, m: jnp.where(jnp.asarray(m) > 0.5, u, jnp.zeros_like(u)), updates, gates)


def gate_updates(gates) -> optax.GradientTransformation:
    """Zero the updates of gated-off leaves; `gates` is a pytree of bools/floats (possibly
    traced) with the updates' structure. Put it *last* in the chain so that momentum and
    weight decay cannot move a frozen leaf: its update is exactly 0, its value bit-identical."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return zero_gated_off(updates, gates), state

    return optax.GradientTransformation(init_fn, update_fn)


def keep_gated_off_state(tx: optax.GradientTransformation, new_state, old_state, gates):
    """`tx`'s new optimizer state with the per-leaf entries (momentum, Adam moments...) of
    gated-off leaves kept from `old_state`; step counts and other non-leaf entries are new."""
    gate_of = optax.tree_utils.tree_map_params(
        tx, lambda _, g: g, new_state, gates,
        transform_non_params=lambda subtree: jax.tree.map(lambda _: True, subtree))
    return jax.tree.map(lambda n, o, g: n if g is True else jnp.where(jnp.asarray(g) > 0.5, n, o),
                        new_state, old_state, gate_of)


class LeafScalesState(NamedTuple):
    leaf_scales: Any  # one float32 multiplier per leaf, with the updates' structure


def scale_leaves(updates, scales):
    """Each leaf's update times its multiplier (a scalar per leaf)."""
    return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales)


def scale_by_leaf() -> optax.GradientTransformation:
    """Per-leaf learning-rate multipliers: each leaf's update times its multiplier. The
    multipliers are the transform's state (1 per leaf at init; `set_leaf_scales` sets
    them), so they are traced program inputs. Put it last in the chain: it scales the final
    update (after momentum / Adam and weight decay)."""

    def init_fn(params):
        return LeafScalesState(jax.tree.map(lambda _: jnp.ones((), jnp.float32), params))

    def update_fn(updates, state, params=None):
        del params
        return scale_leaves(updates, state.leaf_scales), state

    return optax.GradientTransformation(init_fn, update_fn)


def set_leaf_scales(opt_state, scales):
    """An optimizer state with `scale_by_leaf`'s multipliers replaced by `scales`."""
    try:
        return optax.tree_utils.tree_set(opt_state, leaf_scales=scales)
    except KeyError:
        raise ValueError("learning-rate multipliers need an optimizer ending in scale_by_leaf "
                         "(StepModel.of(..., leaf_scales=True))") from None
