"""Which population members share a compiled program, and where each program starts.

A `MemberPlan` groups a population's masks into programs (`deft_jax.evolution.evaluators.population`):

- the whole (padded) population in one program from its lowest first trainable stage, or
- with `members_per_program = k`, programs of k members per device run one after another,
  members grouped by the stage their program starts at. With k = 1 (`vmap-1`, CPU) a
  member's own first trainable stage gets its program once that stage has been wanted
  `compile_after` times (rent or buy: compiling costs several fine-tunes on CPU); until then
  the member runs from the highest start already compiled below its own.

Populations are padded with copies of their first mask: to the largest population seen
(one program serves every generation) or to whole programs of k members per device.
"""

from __future__ import annotations

from collections.abc import Sequence

from deft_jax.core import training
from deft_jax.core.masks import GroupMask
from deft_jax.models.base import ModelSpec


class MemberPlan:
    """Program grouping, padding and counters of a population evaluator."""

    def __init__(self, spec: ModelSpec, cache_prefix: bool, num_devices: int,
                 members_per_program: int | None, compile_after: int, pad_to: int | None):
        self.spec, self.cache_prefix, self.num_devices = spec, cache_prefix, num_devices
        # None: the whole (padded) population in one program; k: programs of k members per device
        self.members_per_program = members_per_program
        self.compile_after = compile_after
        self._wanted: dict[int, int] = {}
        self._starts: set[int] = set()
        self.pad_to = self.round_up(pad_to) if pad_to else 0  # grows to the largest call
        self.calls = self.members = self.padded = 0
        self.stages_trained: list[int] = []  # per member evaluated: stages its program ran

    def start_of(self, mask: GroupMask) -> int:
        """The stage a member's program starts at (its first trainable stage, or 0 when
        the prefix cache is off)."""
        return training.first_trainable_stage(self.spec, mask) if self.cache_prefix else 0

    def program_start(self, mask: GroupMask, floor: int) -> int:
        """Where a member's program starts (members_per_program mode): its own first stage
        when that stage's program exists or has been wanted `compile_after` times, else the
        highest compiled start below it (or `floor`, the population's lowest)."""
        own = self.start_of(mask)
        self._wanted[own] = self._wanted.get(own, 0) + 1
        if own in self._starts or self._wanted[own] >= self.compile_after:
            self._starts.add(own)
            return own
        start = max(s for s in self._starts | {floor} if s <= own)
        self._starts.add(start)
        return start

    def groups(self, masks: Sequence[GroupMask]) -> list[tuple[int, list[int]]]:
        """[(start, member indices)]: one group from the population's lowest first stage, or
        (members_per_program) members grouped by where their program starts."""
        self.calls += 1
        self.members += len(masks)
        floor = min(self.start_of(m) for m in masks)
        if not self.members_per_program:
            return [(floor, list(range(len(masks))))]
        by_start: dict[int, list[int]] = {}
        for i, m in enumerate(masks):
            by_start.setdefault(self.program_start(m, floor), []).append(i)
        return sorted(by_start.items())

    def unit(self) -> int:
        """Program sizes are multiples of this: the device count (x members per program)."""
        return self.num_devices * (self.members_per_program or 1)

    def round_up(self, n: int) -> int:
        return -(-n // self.unit()) * self.unit()

    def padded_chunks(self, masks: Sequence[GroupMask], start: int) -> list[list[GroupMask]]:
        """The masks of one group padded (with copies of the first) and cut into programs;
        counts the stages each real member's program trains."""
        size = self.round_up(len(masks))
        if not self.members_per_program:
            self.pad_to = size = max(self.pad_to, size)
        padded = list(masks) + [masks[0]] * (size - len(masks))
        self.padded += len(padded) - len(masks)
        self.stages_trained += [len(self.spec.stage_names) - start] * len(masks)
        if not self.members_per_program:
            return [padded]
        unit = self.unit()
        return [padded[i:i + unit] for i in range(0, len(padded), unit)]
