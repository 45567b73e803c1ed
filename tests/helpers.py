"""Small builders shared by tests (tiny model, tiny digits config)."""

from __future__ import annotations

import numpy as np

from deft_jax.config import load_config


def tiny_overrides(**extra) -> list[str]:
    """A search that finishes in seconds: small CNN on 16 px digits."""
    base = {
        "model.name": '"small_cnn"', "model.weights": '"none"', "model.input_size": "16",
        "data.source": '{"kind": "digits", "max_per_class": 15}',
        "search.population_size": "4", "search.generations": "2",
        "finetune.batch_size": "32", "finetune.learning_rate": "0.05", "final.epochs": "2",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def tiny_config(**extra):
    return load_config(None, tiny_overrides(**extra))


def random_arrays(n=64, size=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int32)
    return x, y
