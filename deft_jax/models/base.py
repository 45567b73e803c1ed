"""A model is an ordered list of named stages; each stage is one layer group.

Making stages the unit of the model gives three things for free:
- layer groups are the top-level parameter names, so path rules are trivial to state and
  to check for coverage (`deft_jax.groups`);
- BatchNorm mode is chosen per group: each stage gets its own `train` flag;
- a frozen prefix can be run once and cached: `apply(..., start=k)` runs stages k.. only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from deft_jax.models.layers import TrainFlag

StageFactory = Callable[..., nn.Module]  # called as factory(name=stage_name)


class StagedNet(nn.Module):
    """Runs `stages[start:stop]` in order.

    `stage_groups[i]` is the layer group of stage i (default: the stage's own name), and
    `train` maps group name -> flag (or is one bool for all groups).
    """

    stages: tuple[tuple[str, StageFactory], ...]
    stage_groups: tuple[str, ...] | None = None

    def group_of_stage(self, index: int) -> str:
        return self.stage_groups[index] if self.stage_groups else self.stages[index][0]

    @nn.compact
    def __call__(self, x, train: Mapping[str, TrainFlag] | bool = False,
                 start: int = 0, stop: int | None = None):
        stop = len(self.stages) if stop is None else stop
        for index in range(start, stop):
            name, factory = self.stages[index]
            flag = train if isinstance(train, bool) else train[self.group_of_stage(index)]
            x = factory(name=name)(x, train=flag)
        return x


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything the rest of deft_jax needs to know about a backbone.

    `group_rules` are ordered (regex, group) pairs matched against '/'-joined parameter
    paths; the first match wins. `pretrained` says where the weights came from (or None).
    """

    name: str
    net: StagedNet
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    group_rules: tuple[tuple[str, str], ...]
    load_pretrained: Callable[[dict], dict] | None = None  # variables -> variables
    pretrained: str | None = None

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.net.stages)

    @property
    def group_names(self) -> tuple[str, ...]:
        """Layer groups in forward order (the genome's dimensions, plus 'head')."""
        seen: dict[str, None] = {}
        for i in range(len(self.net.stages)):
            seen.setdefault(self.net.group_of_stage(i), None)
        return tuple(seen)

    def init(self, key: jax.Array) -> dict:
        """Variables {'params', 'batch_stats'}: random init, then pretrained weights if any."""
        x = jnp.zeros((1, self.input_size, self.input_size, 3), jnp.float32)
        variables = self.net.init(key, x, train=False)
        variables = {"params": variables["params"],
                     "batch_stats": variables.get("batch_stats", {})}
        if self.load_pretrained is not None:
            variables = self.load_pretrained(variables)
        return jax.tree.map(jnp.asarray, variables)


def stage_rules(stage_names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """One rule per stage: parameters under top-level module `name/` form group `name`."""
    return tuple((rf"^{name}/", name) for name in stage_names)


def as_params_dict(tree: Any) -> dict:
    """flax FrozenDict or dict -> plain nested dict."""
    return jax.tree_util.tree_map(lambda x: x, dict(tree)) if tree is not None else {}
