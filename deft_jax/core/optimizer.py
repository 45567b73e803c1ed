"""The optax side of the training core: the configured optimizer and the transforms a train
step adds to it.

- `make_optimizer`: `[finetune]`'s SGD (momentum) / Adam / AdamW with weight decay, its rate
  over the steps of one training from `learning_rate_schedule` (`finetune.schedule`).
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


ONECYCLE_DIV, ONECYCLE_FINAL_DIV, ONECYCLE_PCT_START = 25.0, 1e5, 0.3  # fastai's fit_one_cycle
ONECYCLE_MOMENTUMS = (0.95, 0.85, 0.95)  # fastai's moms: the first moment goes down, then back up


def one_cycle(total_steps: int, start: float, middle: float, end: float, pct_start: float):
    """fastai's `combined_cos`: a cosine from `start` to `middle` over the first `pct_start`
    of `total_steps`, then a cosine from `middle` to `end` (`fit_one_cycle`'s rate with
    (lr/div, lr, lr/div_final), its momentum with (0.95, 0.85, 0.95))."""
    total = max(1, int(total_steps))
    rise = max(1, int(round(pct_start * total)))

    def cos_between(a, b, pos):
        return a + (1 - jnp.cos(jnp.pi * jnp.clip(pos, 0.0, 1.0))) * (b - a) / 2

    def schedule(count):
        step = jnp.asarray(count, jnp.float32)
        return jnp.where(step < rise, cos_between(start, middle, step / rise),
                         cos_between(middle, end, (step - rise) / max(1, total - rise)))

    return schedule


def needs_steps(cfg: FineTuneConfig) -> bool:
    """Whether the rate depends on the step (then the optimizer needs the step counts)."""
    return cfg.schedule != "constant" or cfg.warmup_epochs > 0


def learning_rate_schedule(cfg: FineTuneConfig, lr: float, steps_per_epoch: int, epochs: int,
                           div: float = ONECYCLE_DIV, pct_start: float | None = None):
    """The rate per step of a training of `epochs` x `steps_per_epoch` steps: constant (after
    a linear warmup of `finetune.warmup_epochs` from 0), cosine (warmup, then a cosine decay
    to 0) or one-cycle (`optax.cosine_onecycle_schedule`: from lr/div up to lr over
    pct_start of the steps - warmup_epochs / epochs, else 0.3 - then down to lr/1e5 along
    cosines, fastai's `fit_one_cycle` defaults; `one_cycle`)."""
    total = max(1, int(steps_per_epoch) * int(epochs))
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    if cfg.schedule == "onecycle":
        if pct_start is None:
            pct_start = cfg.warmup_epochs / epochs if cfg.warmup_epochs > 0 else ONECYCLE_PCT_START
        return one_cycle(total, lr / div, lr, lr / ONECYCLE_FINAL_DIV, pct_start)
    if cfg.schedule == "cosine":
        if warmup == 0:
            return optax.cosine_decay_schedule(lr, total)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, 0.0)
    if warmup == 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])


def make_optimizer(cfg: FineTuneConfig, learning_rate: float | None = None, steps_per_epoch: int | None = None,
                   epochs: int | None = None, schedule=None) -> optax.GradientTransformation:
    """`steps_per_epoch` and `epochs` (default `cfg.epochs`): the training the rate schedule
    spans, needed unless `finetune.schedule` is constant without warmup; `schedule`: a
    ready optax schedule instead of `finetune.schedule`'s."""
    lr = cfg.learning_rate if learning_rate is None else learning_rate
    if schedule is not None:
        lr = schedule
    elif needs_steps(cfg):
        if steps_per_epoch is None:
            raise ValueError(f"finetune.schedule = {cfg.schedule} needs the steps per epoch")
        lr = learning_rate_schedule(cfg, lr, steps_per_epoch, cfg.epochs if epochs is None else epochs)
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
