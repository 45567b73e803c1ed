"""A model is an ordered list of named stages; each stage is one layer group.

Making stages the unit of the model gives three things for free:
- layer groups are the top-level parameter names, so path rules are trivial to state and
  to check for coverage (`deft_jax.models.groups`);
- BatchNorm mode is chosen per group: each stage gets its own `train` flag;
- a frozen prefix can be run once and cached: `apply(..., start=k)` runs stages k.. only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from deft_jax.models.groups import LayerGroups
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

    @functools.cached_property
    def layer_groups(self) -> LayerGroups:
        """Per-leaf group labels and group sizes, derived once from the variables' shapes."""
        return LayerGroups(self.variable_shapes(), self.group_rules, self.group_names)

    def variable_shapes(self) -> dict:
        """{'params', 'batch_stats'} as ShapeDtypeStructs (tracing only, no compute)."""
        x = jax.ShapeDtypeStruct((1, self.input_size, self.input_size, 3), jnp.float32)
        shapes = jax.eval_shape(lambda k, xb: self.net.init(k, xb, train=False),
                                jax.random.key(0), x)
        return {"params": dict(shapes["params"]), "batch_stats": dict(shapes.get("batch_stats", {}))}

    def init(self, seed: int) -> dict:
        """Variables {'params', 'batch_stats'}: random init from integer `seed` (the config's
        seed, so the same seed gives the same initial head in search and experiment), then
        pretrained weights if any.

        Random init is done on the host with numpy (He-normal conv kernels, LeCun-normal
        dense kernels, zero biases, unit BN scales): op-by-op JAX init compiles one kernel
        per parameter shape, which costs seconds per model on a small CPU.
        """
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"ModelSpec.init takes an integer seed, got {type(seed).__name__}")
        rng = np.random.default_rng(int(seed))
        flat = traverse_util.flatten_dict(self.variable_shapes())
        values = {}
        for path, leaf in sorted(flat.items()):
            values[path] = _init_leaf(path, leaf.shape, rng)
        variables = traverse_util.unflatten_dict(values)
        variables.setdefault("batch_stats", {})
        if self.load_pretrained is not None:
            variables = self.load_pretrained(variables)
        return jax.tree.map(jnp.asarray, variables)


def _init_leaf(path: tuple[str, ...], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    name = path[-1]
    if path[0] == "batch_stats":
        return (np.ones if name == "var" else np.zeros)(shape, np.float32)
    if name == "scale":
        return np.ones(shape, np.float32)
    if name == "bias":
        return np.zeros(shape, np.float32)
    if name == "kernel":
        fan_in = int(np.prod(shape[:-1]))
        # conv (rank 4): He-normal (ReLU nets); dense: LeCun-normal
        gain = 2.0 if len(shape) == 4 else 1.0
        return (rng.standard_normal(shape) * np.sqrt(gain / max(fan_in, 1))).astype(np.float32)
    return (rng.standard_normal(shape) * 0.01).astype(np.float32)


def stage_rules(stage_names: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """One rule per stage: parameters under top-level module `name/` form group `name`."""
    return tuple((rf"^{name}/", name) for name in stage_names)

