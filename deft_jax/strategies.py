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
    population in one vmapped program; on several devices: sharded over them. There the
    model and population size decide the members per program: the evaluator gets the
    devices' free memory and splits the population when XLA's memory analysis of the
    program says it does not fit (`device_memory_limit`).
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
    return "vmap", (f"auto: one {backend} device, one program for the whole population "
                     "(split into smaller programs if it does not fit in device memory)")


MEMORY_HEADROOM = 0.9  # share of a device's free memory a population program may use


def device_memory_limit() -> int | None:
    """Bytes a population program may use per device: MEMORY_HEADROOM x the smallest free
    memory of this process's devices; None where the backend does not report it (CPU)."""
    free = []
    for device in jax.local_devices():
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return None
        free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return int(MEMORY_HEADROOM * min(free)) if free else None


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
                                        members_per_program=1 if name == "vmap-1" else None,
                                        # the model's and population's size decide how many
                                        # members share a program (see PopulationEvaluator)
                                        memory_limit_bytes=device_memory_limit())
    return evaluator, name, reason
