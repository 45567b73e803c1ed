"""The device programs of a population evaluator (`deft_jax.evolution.evaluators.population`) and moving its
arrays: members on a leading axis, `jax.vmap` over them, and with a mesh `shard_map` over a
one-axis mesh ("pop") of all devices (across processes too): member state and gates split
over the devices, batches replicated, validation logits all-gathered so every process gets
every member's fitness."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deft_jax.core import training
from deft_jax.models.base import ModelSpec

AXIS = "pop"


def train_program(step_model: training.StepModel, mesh: Mesh | None):
    """`run(states, gates, xs, ys)` over members: the scanned fine-tune, or one step on CPU
    (`training.scan_steps`); the members' states are donated."""
    fn = jax.vmap(training.program(step_model), in_axes=(0, 0, None, None))
    if mesh is not None:
        member = P(AXIS)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(member, member, P(), P()), out_specs=(member, member))
    return jax.jit(fn, donate_argnums=(0,))


def logits_program(spec: ModelSpec, start: int, mesh: Mesh | None):
    """`logits(params, batch_stats, x)` of every member (inference mode) from stage `start`;
    sharded, the logits come back replicated on every device."""
    net = spec.net

    def member_logits(params, batch_stats, x):
        return net.apply({"params": params, "batch_stats": batch_stats}, x, train=False, start=start)

    fn = jax.vmap(member_logits, in_axes=(0, 0, None))
    if mesh is None:
        return jax.jit(fn)
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()), out_specs=P(AXIS))
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()))


def put(x, mesh: Mesh | None, spec: P):
    """Host array -> device array: plain on one device, NamedSharding(mesh, spec) on a mesh
    (built from per-shard slices, so it works when the mesh spans processes)."""
    if mesh is None:
        return jnp.asarray(x)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda index: np.array(x[index]))


def to_host(tree, mesh: Mesh | None):
    """A (possibly sharded, multi-process) tree as numpy, every member on every process."""
    if mesh is None or jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)
