"""Fitting a population program to device memory.

With a memory limit (90% of the device's free memory, see
`deft_jax.evolution.evaluators.choice`), a program's size is read from XLA's memory analysis
of the compiled program (arguments + outputs + temporaries - donated aliases, per device)
before it runs; when the whole population does not fit, it runs as programs of fewer
members (halving until it fits). The analysed program is compiled ahead of time into the
evaluator's `ProgramCache` under the key it runs from, so the program of the analysis is
the one that runs (no second compile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.programs import AXIS


def compiled_bytes(compiled: jax.stages.Compiled) -> int:
    """Per-device bytes a compiled program needs (XLA memory analysis)."""
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


def train_argument_shapes(member_state, size: int, groups: Sequence[str], xs, ys,
                          mesh: Mesh | None) -> tuple:
    """The shapes of a population train program's arguments (states, gates, xs, ys) for
    `size` members, one member's state given as shapes; sharded over `mesh` when given."""
    member = NamedSharding(mesh, P(AXIS)) if mesh is not None else None
    shared = NamedSharding(mesh, P()) if mesh is not None else None
    states = jax.tree.map(lambda a: jax.ShapeDtypeStruct((size,) + tuple(a.shape), a.dtype,
                                                         sharding=member), member_state)
    gates = {g: jax.ShapeDtypeStruct((size,), jnp.float32, sharding=member) for g in groups}
    return (states, gates, jax.ShapeDtypeStruct(xs.shape, xs.dtype, sharding=shared),
            jax.ShapeDtypeStruct(ys.shape, ys.dtype, sharding=shared))


class MemoryFit:
    """Members per device that fit a memory limit, checked once per (members per device,
    first stage run); `decision` is what the latest check decided (for the run's stats)."""

    def __init__(self, limit_bytes: int | None):
        self.limit_bytes = limit_bytes
        self.decision: dict | None = None
        self._fitted: set[tuple[int, int]] = set()

    def members_per_device(self, per_device: int, start: int, members_per_program: int | None,
                           bytes_for: Callable[[int], int]) -> int:
        """`per_device` if its program fits, else halved until it does; `bytes_for(k)`: the
        program bytes for k members per device. `members_per_program` (the plan's, None for
        the whole population) is reported when nothing was halved."""
        if (per_device, start) in self._fitted:
            return per_device
        asked = per_device
        while True:
            needed = bytes_for(per_device)
            if needed <= self.limit_bytes:
                break
            if per_device == 1:
                raise UserError(
                    f"one population member's fine-tune needs {needed / 2**30:.2f} GiB per device, more "
                    f"than the {self.limit_bytes / 2**30:.2f} GiB available; lower finetune.batch_size "
                    "or model.input_size")
            per_device = -(-per_device // 2)
        self._fitted.add((per_device, start))
        self.decision = {"members_per_program": per_device if per_device != asked else members_per_program,
                         "program_bytes": int(needed), "limit_bytes": int(self.limit_bytes)}
        return per_device
