"""Assemble a `ModelSpec` from stages, their coarse groups and a weight layout.

Every ImageNet backbone here is a list of stages (one block each: a residual block, a conv
layer, an MBConv ...). Granularity "block" makes each stage its own layer group;
granularity "stage" groups stages by the architecture's own stages (ResNet `layer1`..,
MBConv stages ...). The head is always its own group. Group rules are one regex per stage
(`^stage_name/`), so every parameter and statistic of a stage - convolution, BatchNorm,
LayerNorm, layer scale - belongs to the stage's group whatever kind of layer it is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp

from deft_jax.errors import UserError
from deft_jax.models.base import ModelSpec, StagedNet
from deft_jax.models.groups import GRANULARITIES
from deft_jax.models.weight_layout import Entry, pretrained_loader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str             # top-level parameter name and block-granularity group
    factory: Callable     # called as factory(name=name)
    coarse_group: str     # group at stage granularity


def staged_spec(name: str, stages: list[Stage], *, granularity: str, input_size: int,
                layouts: Mapping[str, list[Entry]], weights: str | Path | None = None,
                load_head: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                min_input_size: int = 1) -> ModelSpec:
    """ModelSpec of `stages` with groups at `granularity`; `weights` (a file) is checked
    against `layouts` now and copied in by `ModelSpec.init`."""
    if granularity not in GRANULARITIES:
        raise UserError(f"unknown granularity {granularity!r} for {name} "
                        f"(choose from {', '.join(GRANULARITIES)})")
    if not isinstance(input_size, int) or input_size < min_input_size:
        raise UserError(f"{name}: input size must be an integer >= {min_input_size}, "
                        f"got {input_size!r}")
    pairs = tuple((s.name, s.factory) for s in stages)
    if granularity == "block":
        net = StagedNet(pairs)
        rules = tuple((rf"^{s.name}/", s.name) for s in stages)
    else:
        net = StagedNet(pairs, stage_groups=tuple(s.coarse_group for s in stages))
        rules = tuple((rf"^{s.name}/", s.coarse_group) for s in stages)
    load_pretrained, pretrained = None, None
    if weights is not None:
        shapes = jax.eval_shape(
            functools.partial(net.init, train=False), jax.random.key(0),
            jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32))
        load_pretrained, pretrained = pretrained_loader(weights, name, layouts, shapes, load_head)
    return ModelSpec(name=name, net=net, input_size=input_size, mean=tuple(mean),
                     std=tuple(std), group_rules=rules, load_pretrained=load_pretrained,
                     pretrained=pretrained)
