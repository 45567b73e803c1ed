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
from deft_jax.runtime.xla_options import fitness_compiler_options

AXIS = "pop"


def one_member(fn):
    """`fn` of one member run on arguments with a leading member axis of size 1: the member
    axis is dropped inside the program (XLA compiles the unbatched program, about a quarter
    faster on CPU than `vmap` over one member) and put back on the outputs."""

    def run(states, gates, xs, ys):
        state, loss = fn(jax.tree.map(lambda a: a[0], states), jax.tree.map(lambda a: a[0], gates), xs, ys)
        return jax.tree.map(lambda a: a[None], state), loss[None]

    return run


def train_program(step_model: training.StepModel, mesh: Mesh | None, size: int | None = None):
    """`run(states, gates, xs, ys)` over members: the scanned fine-tune, or one step on CPU
    (`training.scan_steps`); the members' states are donated. `size` 1 without a mesh: the
    unbatched program of one member (`one_member`)."""
    options = fitness_compiler_options()
    if size == 1 and mesh is None:
        return jax.jit(one_member(training.program(step_model)), donate_argnums=(0,), compiler_options=options)
    fn = jax.vmap(training.program(step_model), in_axes=(0, 0, None, None))
    if mesh is not None:
        member = P(AXIS)
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(member, member, P(), P()), out_specs=(member, member))
    return jax.jit(fn, donate_argnums=(0,), compiler_options=options)


def logits_program(spec: ModelSpec, start: int, mesh: Mesh | None):
    """`logits(params, batch_stats, x)` of every member (inference mode) from stage `start`;
    sharded, the logits come back replicated on every device."""
    net = spec.net

    def member_logits(params, batch_stats, x):
        return net.apply({"params": params, "batch_stats": batch_stats}, x, train=False, start=start)

    fn = jax.vmap(member_logits, in_axes=(0, 0, None))
    options = fitness_compiler_options()
    if mesh is None:
        return jax.jit(fn, compiler_options=options)
    fn = jax.shard_map(fn, mesh=mesh, in_specs=(P(AXIS), P(AXIS), P()), out_specs=P(AXIS))
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P()), compiler_options=options)


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


def member_variables(variables: dict, host_state, i: int) -> dict:
    """Member i's whole variables {'params', 'batch_stats'} (numpy): `variables` with the
    leaves a population program trained (a suffix, each leaf with a member axis) replaced."""
    member = {"params": dict(variables["params"]), "batch_stats": dict(variables["batch_stats"])}
    member["params"].update(jax.tree.map(lambda a: a[i], host_state.params))
    member["batch_stats"].update(jax.tree.map(lambda a: a[i], host_state.batch_stats))
    return member
