"""Choosing how population members' short fine-tunes run."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np

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
    devices' free memory (the host's, on CPU) and splits the population when XLA's memory
    analysis of the program says it does not fit (`device_memory_limit`).
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


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory_limit() -> int | None:
    """Bytes a population program may use per device: MEMORY_HEADROOM x the smallest free
    memory of this process's devices. CPU devices report none: there the host's available
    memory, shared by its devices, is the limit. None if unknown. In a multi-process run
    every process gets the smallest limit of all, so all choose the same program split."""
    devices = jax.local_devices()
    host = host_available_bytes() if any(d.platform == "cpu" for d in devices) else None
    free: list[int] | None = []
    for device in devices:
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "bytes_limit" in stats:
            free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
        elif device.platform == "cpu" and host is not None:
            free.append(host // len(devices))
        else:
            free = None
            break
    limit = int(MEMORY_HEADROOM * min(free)) if free else None
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        mib = np.asarray(-1 if limit is None else limit // 2**20, np.int32)
        every = np.asarray(multihost_utils.process_allgather(mib))
        limit = None if (every < 0).any() else int(every.min()) * 2**20
    return limit


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
