"""The bounds of every integer config key, checked before any work: above them a run would
hang for years or ask XLA for impossible arrays (a data source's options: `SOURCE_INT_BOUNDS`
in `config.sources`)."""

from __future__ import annotations

import dataclasses

from deft_jax.config.parsing import field_types, optional_type
from deft_jax.config.sources import MAX_COUNT, MAX_INPUT_SIZE, shown
from deft_jax.errors import UserError

MAX_SEED = 2**31 - 1
# [lowest, highest] of every integer key
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, MAX_SEED),
    "data.split_seed": (0, MAX_SEED),
    "data.train_per_class": (0, MAX_COUNT),
    "data.val_per_class": (0, MAX_COUNT),
    "model.input_size": (8, MAX_INPUT_SIZE),  # MAX_INPUT_SIZE: see config.sources
    "finetune.batch_size": (1, 1 << 16),
    "finetune.epochs": (1, 10_000),
    "search.population_size": (4, 4096),  # DE needs 4
    "search.generations": (0, 100_000),
    "search.workers": (0, 256),
    "search.folds": (1, 100),
    "final.epochs": (1, 10_000),
    "final.ensemble": (1, 100),
    "experiment.seeds": (1, 1000),
    "experiment.ensemble_size": (1, 100),
}

def int_keys(cls, where: str = "") -> list[str]:
    """The dotted names of every integer key of the dataclass `cls` (a `Config`: its
    sections'; not data.source's)."""
    keys = []
    for name, typ in field_types(cls).items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(typ):
            keys += int_keys(typ, key)
        elif typ is int or optional_type(typ) is int:
            keys.append(key)
    return keys


def check_int_bounds(cfg) -> None:
    """Every integer key of `cfg` (a `Config`) within its `INT_BOUNDS` (a key without bounds
    is a bug here)."""
    for key in int_keys(type(cfg)):
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        lo, hi = INT_BOUNDS[key]
        if value is not None and not lo <= value <= hi:
            raise UserError(f"invalid config: {key} must be an integer in [{lo}, {hi}], "
                            f"got {shown(value)}")
