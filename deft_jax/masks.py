"""Genome -> layer-group mask.

A genome is a point in [0,1]^G over the searchable groups (every group except the
classification head, which is always trained). A gene above the threshold trains its
group. Per-leaf masks and gates are a `tree.map` over the model's group labels
(`ModelSpec.layer_groups`, see `deft_jax.groups.LayerGroups`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

HEAD = "head"
GroupMask = dict[str, bool]


def searchable_groups(group_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(g for g in group_names if g != HEAD)


def decode_genome(genome, group_names: Sequence[str], threshold: float = 0.5) -> GroupMask:
    """genome over searchable groups -> {group: trainable} over all groups (head: True)."""
    genes = np.asarray(genome, dtype=np.float64).reshape(-1)
    searchable = searchable_groups(group_names)
    if genes.size != len(searchable):
        raise ValueError(f"genome has {genes.size} genes for {len(searchable)} searchable groups")
    on = dict(zip(searchable, (bool(g > threshold) for g in genes)))
    return {g: on.get(g, True) for g in group_names}


def mask_key(mask: Mapping[str, bool]) -> str:
    """Compact identity of a mask: one '1'/'0' per group, in group order."""
    return "".join("1" if mask[g] else "0" for g in mask)


def mask_from_key(key: str, group_names: Sequence[str]) -> GroupMask:
    return {g: c == "1" for g, c in zip(group_names, key)}


def mask_from_names(trainable: Sequence[str], group_names: Sequence[str]) -> GroupMask:
    """Mask training exactly `trainable` (+ the head). Unknown names raise ValueError."""
    unknown = set(trainable) - set(group_names)
    if unknown:
        raise ValueError(f"unknown layer groups {sorted(unknown)}; known: {list(group_names)}")
    return {g: (g in trainable) or g == HEAD for g in group_names}
