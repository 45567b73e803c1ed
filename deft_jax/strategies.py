"""Choosing how population members' short fine-tunes run."""

from __future__ import annotations

import jax

from deft_jax.config import Config
from deft_jax.fitness import SequentialEvaluator, SplitArrays
from deft_jax.models.base import ModelSpec


def pick_strategy(requested: str) -> tuple[str, str]:
    """(strategy, reason). `auto`: sequential static masks on CPU (a static mask skips
    frozen-weight gradients and vmap over distinct weights is slower than a loop there);
    the population program on accelerators."""
    backend = jax.default_backend()
    if requested != "auto":
        where = f"{jax.device_count()} {backend} device(s)"
        if jax.process_count() > 1:
            where += f" in {jax.process_count()} processes"
        return requested, f"requested; {where}"
    if backend == "cpu":
        return "sequential", "CPU backend: static masks skip frozen-weight gradients"
    if jax.device_count() > 1:
        return "sharded", f"{jax.device_count()} {backend} devices"
    return "vmap", f"one {backend} device: one program for the whole population"


def make_evaluator(cfg: Config, spec: ModelSpec, variables: dict, data: SplitArrays):
    name, reason = pick_strategy(cfg.search.strategy)
    if name == "sequential":
        evaluator = SequentialEvaluator(spec, variables, data, cfg.finetune,
                                        metric=cfg.search.metric, seed=cfg.seed)
    else:
        from deft_jax.population import PopulationEvaluator
        evaluator = PopulationEvaluator(spec, variables, data, cfg.finetune,
                                        metric=cfg.search.metric, seed=cfg.seed,
                                        sharded=name == "sharded")
    return evaluator, name, reason
