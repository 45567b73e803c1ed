"""The training core: one batch plan, one pure train step, one fine-tune program, one
inference function. Fitness fine-tunes (static masks and gated populations), final
training, every baseline method and the benchmarks use these.

- The seeded batches (plan + augmentation, stacked per program call) are
  `deft_jax.data.batches`'; every population member of a seed sees the same ones.
- `TrainState` (params, batch_stats, opt_state) and `train_step`, a pure function of
  (state, group flags, x, y). Group flags are Python bools (a static mask: only trainable
  leaves are differentiated and handed to the optimizer, frozen leaves pass through
  bit-identical) or traced floats (a gated population member: every leaf is differentiated,
  the optimizer's updates of frozen leaves are zeroed after `tx.update` and their optimizer
  state is kept as it was, so momentum and weight decay cannot move them). Either way the
  flags are the BatchNorm train/inference switches of each group.
- Per-leaf learning-rate multipliers (`search.space = "mask+lr"`) are `scale_by_leaf`, the
  last transform of the optax chain (`StepModel.of(..., leaf_scales=True)`): the
  multipliers live in its optimizer state, so they are traced inputs of the program (every
  vmapped member has its own, no recompile per multiplier), as auto-rgn's `scale_by_rgn`
  keeps its per-tensor multipliers in its state.
- `fine_tune_program`: all steps of a fine-tune as one device program (`lax.scan` over the
  stacked batches: no host round trip per step), transformed where it is used (`jax.jit`
  for one member, `jax.vmap` for a population, `shard_map` over devices). On accelerators
  only (`scan_steps`): XLA:CPU runs convolutions inside a while loop through a slow path
  (measured: 13.8 s per ResNet-20 step in a scan against 0.58 s for the same step called
  from the host, on the same busy 2-core machine), so CPU programs are one step each
  (`step_program`), called from the host by `run_batches`.
- `logits`: inference-mode forward over an array in fixed-size padded chunks, one program
  per stage chained on the device (no program per (start, stop) pair).

`start = k` trains on features entering stage k (`deft_jax.evolution.fitness.PrefixFeatureCache`):
the program contains no stage below k, so no forward or backward pass runs there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from deft_jax.core.optimizer import (
    keep_gated_off_state,
    scale_by_leaf,
    set_leaf_scales,
    zero_gated_off,
)
from deft_jax.models.base import ModelSpec
from deft_jax.models.groups import leaf_values
from deft_jax.runtime.program_cache import ProgramCache
from deft_jax.runtime.xla_options import fitness_compiler_options

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

GroupFlags = Mapping[str, Any]  # group -> Python bool (static mask) or traced float gate


class TrainState(NamedTuple):
    params: dict
    batch_stats: dict
    opt_state: Any


# --- the train step --------------------------------------------------------------------------


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def is_static(flags: GroupFlags) -> bool:
    return all(isinstance(v, (bool, np.bool_)) for v in flags.values())


def _partition(params: Mapping, leaf_mask: Mapping) -> tuple[dict, dict]:
    flat = traverse_util.flatten_dict(dict(params))
    on = traverse_util.flatten_dict(dict(leaf_mask))
    return ({k: v for k, v in flat.items() if on[k]}, {k: v for k, v in flat.items() if not on[k]})


def _merge(*parts: Mapping) -> dict:
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return traverse_util.unflatten_dict(merged)


class StepModel(NamedTuple):
    """What a train step closes over (static): the network, the stage it starts at, the
    group label trees of the parameters it trains, the base optimizer and compute dtype."""

    net: Any
    start: int
    labels: dict  # group name per parameter leaf (stages start.. only)
    tx: optax.GradientTransformation
    dtype: Any = jnp.float32

    @classmethod
    def of(cls, spec: ModelSpec, tx: optax.GradientTransformation, start: int = 0,
           compute_dtype: str = "float32", leaf_scales: bool = False) -> "StepModel":
        """`leaf_scales`: `tx` followed by `scale_by_leaf` (per-group learning rates)."""
        tx = optax.chain(tx, scale_by_leaf()) if leaf_scales else tx
        return cls(spec.net, start, suffix(spec.layer_groups.labels, spec, start), tx,
                   COMPUTE_DTYPES[compute_dtype])


def suffix(tree: Mapping, spec: ModelSpec, start: int) -> dict:
    """The top-level entries of a variables collection for stages start.."""
    names = set(spec.stage_names[start:])
    return {k: v for k, v in tree.items() if k in names}


def init_state(model: StepModel, params: Mapping, batch_stats: Mapping, flags: GroupFlags,
               lr_multipliers: Mapping[str, Any] | None = None) -> TrainState:
    """A fresh optimizer state: over the trainable leaves for a static mask, over every leaf
    (the gates do not enter it) for a gated member. `lr_multipliers` (group -> multiplier,
    a float or a [members] array) scale each group's updates (per-group learning rates;
    the model's optimizer must end in `scale_by_leaf`)."""
    params, batch_stats = dict(params), dict(batch_stats)
    if is_static(flags):
        trainable, _ = _partition(params, _leaf_mask(model, flags))
        opt_state = model.tx.init(trainable)
        if lr_multipliers is not None:
            flat_labels = traverse_util.flatten_dict(dict(model.labels))
            opt_state = set_leaf_scales(opt_state, {k: jnp.asarray(lr_multipliers[flat_labels[k]], jnp.float32)
                                                    for k in trainable})
        return TrainState(params, batch_stats, opt_state)
    opt_state = model.tx.init(params)
    if lr_multipliers is not None:
        opt_state = set_leaf_scales(opt_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32),
                                                            leaf_values(model.labels, lr_multipliers)))
    return TrainState(params, batch_stats, opt_state)


def _leaf_mask(model: StepModel, flags: GroupFlags) -> dict:
    return leaf_values(model.labels, flags)


def _loss(model: StepModel, params, batch_stats, flags, x, y):
    if model.dtype != jnp.float32:  # mixed precision: float32 master weights and statistics
        params = jax.tree.map(lambda p: p.astype(model.dtype), params)
        x = x.astype(model.dtype)
    logits, updated = model.net.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=dict(flags), start=model.start, mutable=["batch_stats"])
    return cross_entropy(logits.astype(jnp.float32), y), dict(updated.get("batch_stats", {}))


def train_step(model: StepModel, state: TrainState, flags: GroupFlags, x, y) -> tuple[TrainState, jax.Array]:
    """One optimizer step on batch (x, y); returns the new state and the batch loss."""
    if is_static(flags):
        flags = {g: bool(v) for g, v in flags.items()}
        trainable, frozen = _partition(state.params, _leaf_mask(model, flags))

        def loss_fn(tp):
            return _loss(model, _merge(tp, frozen), state.batch_stats, flags, x, y)

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        updates, opt_state = model.tx.update(grads, state.opt_state, trainable)
        params = _merge(optax.apply_updates(trainable, updates), frozen)
        return TrainState(params, stats, opt_state), loss

    def loss_fn(p):
        return _loss(model, p, state.batch_stats, flags, x, y)

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    gates = _leaf_mask(model, flags)
    updates, opt_state = model.tx.update(grads, state.opt_state, state.params)
    # a frozen leaf's update is exactly 0 and its optimizer state is left as it was
    updates = zero_gated_off(updates, gates)
    opt_state = keep_gated_off_state(model.tx, opt_state, state.opt_state, gates)
    return TrainState(optax.apply_updates(state.params, updates), stats, opt_state), loss


def scan_steps() -> bool:
    """Whether fine-tunes run as one scanned program (accelerators) or step by step (CPU)."""
    return jax.default_backend() != "cpu"


def step_program(model: StepModel, flags: GroupFlags | None = None) -> Callable:
    """`run(state, gates, x, y) -> (state, loss)`: one step, the counterpart of
    `fine_tune_program` for backends where a scan is slow."""

    def run(state: TrainState, gates, x, y):
        return train_step(model, state, flags if flags is not None else gates, x, y)

    return run


def program(model: StepModel, flags: GroupFlags | None = None) -> Callable:
    """The program this backend runs: the scanned fine-tune, or one step."""
    return fine_tune_program(model, flags) if scan_steps() else step_program(model, flags)


def run_batches(compiled: Callable, state: TrainState, gates, batches, scanned: bool | None = None):
    """Runs a compiled `program` over stacked batch chunks [(xs, ys), ...]; returns the final
    state and the losses (one array per call: [steps] scanned, [] per step; with a leading
    member axis for populations)."""
    scanned = scan_steps() if scanned is None else scanned
    losses = []
    for xs, ys in batches:
        if scanned:
            state, loss = compiled(state, gates, xs, ys)
            losses.append(loss)
        else:
            for i in range(xs.shape[0]):
                state, loss = compiled(state, gates, xs[i], ys[i])
                losses.append(loss)
    return state, losses


def fine_tune_program(model: StepModel, flags: GroupFlags | None = None) -> Callable:
    """`run(state, gates, xs, ys) -> (state, losses)`: every step of one chunk of batches
    as one `lax.scan`. With static `flags`, `gates` is ignored (pass None); otherwise the
    gates are the traced per-group flags."""

    def run(state: TrainState, gates, xs, ys):
        use = flags if flags is not None else gates

        def body(s, batch):
            return train_step(model, s, use, *batch)

        return jax.lax.scan(body, state, (xs, ys))

    return run


# --- inference -------------------------------------------------------------------------------


def padded_chunks(x: np.ndarray, size: int):
    """(chunk, n_real) over x: every chunk has exactly `size` rows (the last one padded by
    repeating its final row), so one compiled program serves every call."""
    for i in range(0, len(x), size):
        chunk = x[i:i + size]
        n = len(chunk)
        if n < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        yield chunk, n


def stage_variables(variables: Mapping, name: str) -> dict:
    """The variables of one stage (top-level entry `name` of each collection)."""
    return {c: ({name: tree[name]} if name in tree else {}) for c, tree in variables.items()}


def logits(spec: ModelSpec, variables: dict, x: np.ndarray, start: int = 0, stop: int | None = None,
           batch_size: int = 256, cache: ProgramCache | None = None) -> np.ndarray:
    """Run stages [start, stop) in inference mode over x in chunks of `batch_size` rows (the
    last one padded); returns numpy. One program per stage, kept in `cache` under ("stage",
    i) and chained on the device, so every (start, stop) and every member's variables share
    the same programs (given the same chunk size)."""
    if len(x) == 0:
        return np.zeros((0,))
    cache = ProgramCache() if cache is None else cache
    net = spec.net
    stop = len(spec.stage_names) if stop is None else stop
    options = fitness_compiler_options()

    def stage_program(i: int):
        def stage_forward(v, xb):
            return net.apply(v, xb, train=False, start=i, stop=i + 1)
        return cache.get(("stage", i), lambda: jax.jit(stage_forward, compiler_options=options))

    programs = [(stage_program(i), stage_variables(variables, spec.stage_names[i])) for i in range(start, stop)]
    outputs = []
    for chunk, n in padded_chunks(x, min(batch_size, len(x))):
        h = jnp.asarray(chunk)
        for fn, v in programs:
            h = fn(v, h)
        outputs.append(np.asarray(h)[:n])
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def first_trainable_stage(spec: ModelSpec, mask: Mapping[str, bool]) -> int:
    for i in range(len(spec.net.stages)):
        if mask[spec.net.group_of_stage(i)]:
            return i
    return len(spec.net.stages) - 1
