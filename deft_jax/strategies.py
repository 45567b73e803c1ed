"""Choosing how population members' short fine-tunes run."""

from __future__ import annotations

import jax

from deft_jax.config import Config
from deft_jax.fitness import SequentialEvaluator, SplitArrays
from deft_jax.models.base import ModelSpec


def pick_strategy(requested: str) -> tuple[str, str]:
    """(strategy, reason).

    `auto` on CPU: `vmap` with one member per program - masks enter as traced gates, so one
    program is compiled for the whole search, and members run one after another. Static
    masks (`sequential`) skip frozen-weight gradients, but recompile for every new mask
    (measured here: ~4 s per mask for ResNet-20, ~21 s for Lite0 at 96 px), which costs more
    than it saves in a real search where most masks are new; and vmap over several members
    runs ~3x slower per member on XLA:CPU than one at a time. On one accelerator: the whole
    population in one vmapped program; on several devices: sharded over them.
    """
    backend = jax.default_backend()
    where = f"{jax.device_count()} {backend} device(s)"
    if jax.process_count() > 1:
        where += f" in {jax.process_count()} processes"
    if requested != "auto":
        return requested, f"requested; {where}"
    if backend == "cpu" and jax.device_count() == 1:
        return "vmap-1", ("auto on CPU: one gated program compiled once, members one at a time "
                          "(static masks recompile per mask; batched members are slower on XLA:CPU)")
    if jax.device_count() > 1:
        return "sharded", f"auto: {where}, population sharded over them"
    return "vmap", f"auto: one {backend} device, one program for the whole population"


def make_evaluator(cfg: Config, spec: ModelSpec, variables: dict, data: SplitArrays):
    name, reason = pick_strategy(cfg.search.strategy)
    if name == "sequential":
        evaluator = SequentialEvaluator(spec, variables, data, cfg.finetune,
                                        metric=cfg.search.metric, seed=cfg.seed)
    else:
        from deft_jax.population import PopulationEvaluator
        evaluator = PopulationEvaluator(spec, variables, data, cfg.finetune,
                                        metric=cfg.search.metric, seed=cfg.seed,
                                        sharded=name == "sharded",
                                        members_per_program=1 if name == "vmap-1" else None)
    return evaluator, name, reason
