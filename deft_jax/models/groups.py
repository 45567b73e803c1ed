"""Layer groups: ordered regex rules over parameter paths, with a coverage check.

Every parameter leaf (and every BatchNorm statistic) belongs to exactly one group: the
first rule whose regex matches its '/'-joined path. A leaf no rule matches, or a rule
group that matches nothing, is a bug in the model definition and fails loudly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from flax import traverse_util

Rules = Sequence[tuple[str, str]]
# How coarse a model's layer groups are: one group per block, or one per architectural stage
# (ResNet `layer1`.., EfficientNet stages); the CIFAR models offer blocks only.
GRANULARITIES = ("block", "stage")


def leaf_paths(tree: Mapping) -> list[str]:
    """'/'-joined paths of all leaves of a nested dict, in a stable order."""
    return ["/".join(k) for k in traverse_util.flatten_dict(dict(tree))]


def group_of(path: str, rules: Rules) -> str | None:
    for pattern, group in rules:
        if re.search(pattern, path):
            return group
    return None


def assign_groups(tree: Mapping, rules: Rules, groups: Sequence[str] | None = None) -> dict[str, str]:
    """path -> group for every leaf; raises ValueError unless coverage is exact.

    `groups`, when given, are the groups that must each own at least one leaf.
    """
    assignment: dict[str, str] = {}
    unmatched = []
    for path in leaf_paths(tree):
        group = group_of(path, rules)
        if group is None:
            unmatched.append(path)
        else:
            assignment[path] = group
    if unmatched:
        raise ValueError(f"layer-group rules leave {len(unmatched)} parameters without a group, "
                         f"e.g. {unmatched[0]}")
    if groups is not None:
        unknown = set(assignment.values()) - set(groups)
        empty = [g for g in groups if g not in set(assignment.values())]
        if unknown:
            raise ValueError(f"rules produce groups the model does not declare: {sorted(unknown)}")
        if empty:
            raise ValueError(f"layer groups without parameters: {empty}")
    return assignment


def group_tree(tree: Mapping, rules: Rules) -> dict:
    """Same structure as `tree`, each leaf replaced by its group name."""
    flat = traverse_util.flatten_dict(dict(tree))
    return traverse_util.unflatten_dict({k: group_of("/".join(k), rules) for k in flat})


def group_sizes(params: Mapping, rules: Rules) -> dict[str, int]:
    """Number of parameters per group, in rule order."""
    sizes: dict[str, int] = {}
    flat = traverse_util.flatten_dict(dict(params))
    for k, leaf in flat.items():
        g = group_of("/".join(k), rules)
        sizes[g] = sizes.get(g, 0) + int(np.prod(np.shape(leaf)))
    return sizes


def leaf_values(labels: Mapping, per_group: Mapping) -> dict:
    """A label tree (group name per leaf) with each leaf replaced by `per_group[group]`."""
    return traverse_util.unflatten_dict(
        {k: per_group[g] for k, g in traverse_util.flatten_dict(dict(labels)).items()})


class LayerGroups:
    """Layer groups of one network, derived once from its variables' structure.

    `labels` / `stats_labels` have the structure of the parameters / BatchNorm statistics,
    each leaf replaced by its group's name (the rules are matched here, once, with the
    coverage check); masks and gates become a `jax.tree.map` over them. `sizes` counts the
    parameters of each group, in forward order.
    """

    def __init__(self, variables: Mapping, rules: Rules, names: Sequence[str]):
        params, stats = variables["params"], variables.get("batch_stats", {})
        assign_groups(params, rules, names)  # raises unless every leaf has exactly one group
        assign_groups(stats, rules)
        self.names = tuple(names)
        self.labels = group_tree(params, rules)
        self.stats_labels = group_tree(stats, rules)
        sizes = group_sizes(params, rules)
        self.sizes = {g: sizes.get(g, 0) for g in self.names}
        self.total = sum(self.sizes.values())

    def leaf_values(self, per_group: Mapping, labels: Mapping | None = None) -> dict:
        """`labels` (default: the parameters') with each leaf replaced by `per_group[group]`;
        labels of a sub-tree (e.g. the stages from `start` on) give a tree of that sub-tree."""
        return leaf_values(self.labels if labels is None else labels, per_group)

    def fraction(self, mask: Mapping[str, bool]) -> float:
        """Share of all parameters that `mask` trains."""
        return sum(n for g, n in self.sizes.items() if mask[g]) / max(self.total, 1)
