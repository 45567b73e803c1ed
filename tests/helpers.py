"""Small builders shared by tests (tiny model, tiny digits config)."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from deft_jax.config.presets import PAPER_DEFT
from deft_jax.config.schema import load_config


def tiny_overrides(**extra) -> list[str]:
    """A search that finishes in seconds: small CNN on 16 px digits, the paper's DEFT (the
    search command would otherwise start from the declared one)."""
    base = {k: json.dumps(v) for k, v in PAPER_DEFT.items()}
    base |= {
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


def small_cnn_problem(**finetune):
    """A 4-conv CNN at 16 px (3 classes), its variables (seed 3), 64/32 random train/val
    images and a fine-tune recipe (2 epochs of SGD unless overridden)."""
    from deft_jax.config.schema import FineTuneConfig
    from deft_jax.data.inputs import SplitArrays
    from deft_jax.models.small_cnn import small_cnn

    spec = small_cnn(3, input_size=16)
    variables = spec.init(3)
    x, y = random_arrays(96)
    data = SplitArrays(x[:64], y[:64], x[64:], y[64:], 3)
    base = dict(batch_size=16, learning_rate=0.1, momentum=0.9, weight_decay=0.01, epochs=2)
    return spec, variables, data, FineTuneConfig(**{**base, **finetune})


@contextlib.contextmanager
def logged(on_message=None, name: str = "deft_jax"):
    """The messages (INFO and up) the `deft_jax` loggers emit inside the block, as a list;
    `on_message(text)` is also called at each one, while it is emitted."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())
            if on_message is not None:
                on_message(record.getMessage())

    logger, handler = logging.getLogger(name), Collect()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def search_process(args: list[str], env: dict) -> subprocess.Popen:
    """`python -m deft_jax.search ARGS` started from the repository, its output piped (text)."""
    repo = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-m", "deft_jax.search", *args], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def static_fine_tunes(monkeypatch) -> list[tuple[int, int]]:
    """(items, epochs) of every static-mask fine-tune (`FineTuner.fine_tune`: final trainings,
    sequential fitness) from now on."""
    from deft_jax.core import finetune

    calls, original = [], finetune.FineTuner.fine_tune

    def counted(self, variables, mask, x, y, *args, **kwargs):
        calls.append((len(x), kwargs.get("epochs") or self.epochs))
        return original(self, variables, mask, x, y, *args, **kwargs)

    monkeypatch.setattr(finetune.FineTuner, "fine_tune", counted)
    return calls


def digits_method_context(**overrides):
    """An experiment method's context, seed 0: 10 digits per class, the small CNN at 16 px,
    `tiny_overrides` with `overrides`."""
    from deft_jax.data.inputs import prepare_data
    from deft_jax.experiment.runner import seed_config
    from deft_jax.methods import ExperimentCache, MethodContext
    from deft_jax.models import build_model

    over = {"data.source": '{"kind": "digits", "max_per_class": 10}', **overrides}
    cfg = seed_config(load_config(None, tiny_overrides(**over)), 0)
    spec = build_model("small_cnn", 10, "none", 16)
    return MethodContext(cfg=cfg, data=prepare_data(cfg, spec), spec=spec, variables=spec.init(cfg.seed), seed=0,
                         programs=ExperimentCache())
