"""Genome -> layer-group mask.

A genome is a point in [0,1]^G over the searchable groups (every group except the
classification head, which is always trained). A gene above the threshold trains its
group. Per-leaf masks and gates are a `tree.map` over the model's group labels
(`ModelSpec.layer_groups`, see `deft_jax.models.groups.LayerGroups`).

Search spaces (`search.space`):
- `mask` (the paper): a mask is {group: bool}.
- `mask+lr` (per-group learning rates, as in BioTune): the same gene also sets a trained
  group's learning-rate multiplier, on a log scale from LR_LEVELS[0] = 10^-2 (gene just
  above the threshold) to 1 (gene = 1), quantised to 9 levels (quarter decades) so that
  the memo table and the mask key stay finite. A mask is then {group: multiplier}, 0 =
  frozen; the head trains at the base rate (True). Every consumer reads a mask through
  `trains` (frozen or not) and `lr_multiplier`, so both kinds of mask work everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

HEAD = "head"
SPACES = ("mask", "mask+lr")
LR_LEVELS = tuple(float(10.0 ** (-2 + k / 4)) for k in range(9))  # 0.01 .. 1.0, quarter decades
LR_LEVELS = LR_LEVELS[:-1] + (1.0,)
GroupMask = dict[str, "bool | float"]  # group -> trains (bool) or learning-rate multiplier (0 = frozen)


def trains(value) -> bool:
    """Whether a mask entry trains its group (True, or a multiplier > 0)."""
    return bool(value) and float(value) > 0


def lr_multiplier(value) -> float:
    """A mask entry's learning-rate multiplier (True -> 1, frozen -> 0)."""
    return float(value) if trains(value) else 0.0


def frozen_pattern(mask: Mapping) -> dict[str, bool]:
    """{group: trains} of any mask."""
    return {g: trains(v) for g, v in mask.items()}


def has_lr_multipliers(mask: Mapping) -> bool:
    return any(trains(v) and lr_multiplier(v) != 1.0 for v in mask.values())


def lr_level(gene: float, threshold: float) -> float:
    """The multiplier of a trained gene in `mask+lr`: 10^-2 .. 1 on a log scale, quantised."""
    k = int(round((len(LR_LEVELS) - 1) * (float(gene) - threshold) / (1.0 - threshold)))
    return LR_LEVELS[min(max(k, 0), len(LR_LEVELS) - 1)]


def searchable_groups(group_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(g for g in group_names if g != HEAD)


def decode_genome(genome, group_names: Sequence[str], threshold: float = 0.5,
                  space: str = "mask") -> GroupMask:
    """genome over searchable groups -> mask over all groups (head: True). In `mask+lr`
    a trained group's value is its learning-rate multiplier (`lr_level`); a multiplier of
    exactly 1 is written True, so a mask+lr mask at full rate equals the plain mask."""
    genes = np.asarray(genome, dtype=np.float64).reshape(-1)
    searchable = searchable_groups(group_names)
    if genes.size != len(searchable):
        raise ValueError(f"genome has {genes.size} genes for {len(searchable)} searchable groups")
    if space not in SPACES:
        raise ValueError(f"unknown search space {space!r}")
    if space == "mask":
        on = dict(zip(searchable, (bool(g > threshold) for g in genes)))
    else:
        on = {}
        for group, gene in zip(searchable, genes):
            level = lr_level(gene, threshold) if gene > threshold else 0.0
            on[group] = False if level == 0.0 else (True if level == 1.0 else level)
    return {g: on.get(g, True) for g in group_names}



def full_mask_key(group_names: Sequence[str], threshold: float = 0.5, space: str = "mask") -> str:
    """The key of the genome of all ones: every group trained (at the base rate)."""
    return mask_key(decode_genome(np.ones(len(searchable_groups(group_names)), np.float32),
                                  group_names, threshold, space))

def _key_char(value) -> str:
    if not trains(value):
        return "0"
    m = lr_multiplier(value)
    if m == 1.0:
        return "1"
    return chr(ord("a") + LR_LEVELS.index(m))


def mask_key(mask: Mapping) -> str:
    """Compact identity of a mask: per group in group order '0' (frozen), '1' (trains at
    the base rate) or 'a'..'h' (trains at LR_LEVELS[0..7] of it, `mask+lr`)."""
    return "".join(_key_char(mask[g]) for g in mask)


def mask_from_key(key: str, group_names: Sequence[str]) -> GroupMask:
    def value(c: str):
        if c in "01":
            return c == "1"
        return LR_LEVELS[ord(c) - ord("a")]

    return {g: value(c) for g, c in zip(group_names, key)}


def mask_from_names(trainable: Sequence[str], group_names: Sequence[str]) -> GroupMask:
    """Mask training exactly `trainable` (+ the head). Unknown names raise ValueError."""
    unknown = set(trainable) - set(group_names)
    if unknown:
        raise ValueError(f"unknown layer groups {sorted(unknown)}; known: {list(group_names)}")
    return {g: (g in trainable) or g == HEAD for g in group_names}
