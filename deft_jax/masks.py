"""Genome -> group mask -> parameter mask -> gated optimizer updates.

A genome is a point in [0,1]^G over the searchable groups (every group except the
classification head, which is always trained). A gene above the threshold trains its
group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from deft_jax.groups import Rules, group_of

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


def param_mask(tree: Mapping, rules: Rules, mask: Mapping[str, bool]) -> dict:
    """Boolean pytree with `tree`'s structure: True where the leaf's group trains."""
    flat = traverse_util.flatten_dict(dict(tree))
    return traverse_util.unflatten_dict(
        {k: bool(mask[group_of("/".join(k), rules)]) for k in flat})


def param_gates(tree: Mapping, rules: Rules, group_gates: Mapping[str, jax.Array]) -> dict:
    """Float pytree of per-leaf gates from (possibly traced, possibly batched) group gates."""
    flat = traverse_util.flatten_dict(dict(tree))
    return traverse_util.unflatten_dict(
        {k: group_gates[group_of("/".join(k), rules)] for k in flat})


def trainable_fraction(params: Mapping, rules: Rules, mask: Mapping[str, bool]) -> float:
    flat = traverse_util.flatten_dict(dict(params))
    total = trained = 0
    for k, leaf in flat.items():
        n = int(np.prod(np.shape(leaf)))
        total += n
        if mask[group_of("/".join(k), rules)]:
            trained += n
    return trained / max(total, 1)


def split_by_mask(tree: Mapping, leaf_mask: Mapping) -> tuple[dict, dict]:
    """(trainable, frozen) flat dicts {path tuple: leaf}."""
    flat = traverse_util.flatten_dict(dict(tree))
    flat_mask = traverse_util.flatten_dict(dict(leaf_mask))
    trainable = {k: v for k, v in flat.items() if flat_mask[k]}
    frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
    return trainable, frozen


def merge_flat(*parts: Mapping) -> dict:
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return traverse_util.unflatten_dict(merged)


def gate_updates(gates) -> optax.GradientTransformation:
    """Zero the updates of gated-off leaves; `gates` is a pytree (or a callable params -> pytree)
    of bools/floats, possibly traced. Put it *last* in the chain so that momentum and weight
    decay cannot move a frozen leaf: its update is exactly 0 and its value stays bit-identical.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        g = gates(params) if callable(gates) else gates
        updates = jax.tree.map(
            lambda u, m: jnp.where(jnp.asarray(m) > 0.5, u, jnp.zeros_like(u)), updates, g)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)
