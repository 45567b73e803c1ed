"""Fitness evaluators: the interface every one of them has, and choosing one.

Names: the *evaluation mode* (`search.evaluation`, `--evaluation`; `search.strategy` and
`--strategy` are accepted aliases) says how population members' short fine-tunes run:
`sequential`, `vmap`, `vmap-1`, `sharded` or `auto`. What a fitness is (`FitnessRecipe`,
`fitness_recipe`) is the same for all of them (`deft_jax.evolution.evaluators.recipe`). The differential-evolution algorithm is
`deft_jax.evolution.loop`'s business, and `benchmarks/evaluation_modes.py` compares the modes.
"""

from __future__ import annotations

import os

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core.masks import GroupMask
from deft_jax.data.inputs import SplitArrays
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.folds import folded_evaluator
from deft_jax.evolution.evaluators.recipe import FitnessRecipe, fitness_recipe
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.host_memory import available_bytes


@runtime_checkable
class Evaluator(Protocol):
    """Scores layer-group masks: fitness = 1 - validation metric after a short fine-tune."""

    name: str  # the evaluation mode it implements
    on_member_done: Callable[[int], None] | None  # told how many members just finished
    # told (index in `masks`, fitness) of each member as soon as it is finished, before
    # `on_member_done` (the search persists it: `deft_jax.evolution.journal`)
    on_member_scored: Callable[[int, float], None] | None

    def evaluate(self, masks: Sequence[GroupMask], epochs: int | None = None) -> list[float]:
        """Fitness per mask, in order (lower is better). `epochs` (default: the whole
        fitness recipe) trains only the first epochs of the same plan (a lower fidelity)."""

    def evaluate_logits(self, masks: Sequence[GroupMask], epochs: int | None = None) -> np.ndarray:
        """Validation logits [len(masks), n_val, classes] after each mask's fine-tune."""

    def stats(self) -> dict:
        """Counters for the run's history (compiles, cache hits, seconds...)."""


def pick_mode(requested: str) -> tuple[str, str]:
    """(evaluation mode, reason).

    `auto` on CPU: `vmap-1` - masks enter as traced gates, so one program per first
    trainable stage is compiled for the whole search, and members run one after another,
    each from its own first trainable stage on cached features. Static masks (`sequential`)
    skip frozen-weight gradients but compile a program for every new mask, which costs more
    than it saves when most masks are new (`benchmarks/evaluation_modes.py` measures both);
    vmap over several members is slower per member on XLA:CPU than one at a time. On one
    accelerator: the whole population in one vmapped program; on several devices: sharded
    over them. There the model and population size decide the members per program: the
    evaluator gets the devices' free memory (the host's, on CPU) and splits the population
    when XLA's memory analysis of the program says it does not fit (`device_memory_limit`).
    """
    backend = jax.default_backend()
    where = f"{jax.device_count()} {backend} device(s)"
    if jax.process_count() > 1:
        where += f" in {jax.process_count()} processes"
    if requested != "auto":
        return requested, f"requested; {where}"
    if backend == "cpu" and jax.device_count() == 1:
        return "vmap-1", ("auto on CPU: gated programs compiled once per first trainable stage, members one "
                          "at a time from their own first stage (static masks compile per mask; batched "
                          "members are slower on XLA:CPU)")
    if jax.device_count() > 1:
        return "sharded", f"auto: {where}, population sharded over them"
    return "vmap", (f"auto: one {backend} device, one program for the whole population "
                     "(split into smaller programs if it does not fit in device memory)")


MEMORY_HEADROOM = 0.9  # share of a device's free memory a population program may use


def device_memory_limit() -> int | None:
    """Bytes a population program may use per device: MEMORY_HEADROOM x the smallest free
    memory of this process's devices. CPU devices report none: there the host's available
    memory, shared by its devices, is the limit. None if unknown. In a multi-process run
    every process gets the smallest limit of all, so all choose the same program split."""
    devices = jax.local_devices()
    host = available_bytes() if any(d.platform == "cpu" for d in devices) else None
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


def build_evaluator(mode: str, spec: ModelSpec, variables: dict, data: SplitArrays,
                    recipe: FitnessRecipe, memory_limit_bytes: int | None = None) -> Evaluator:
    """The evaluator of a concrete evaluation mode (not `auto`; see `pick_mode`)."""
    if mode == "sequential":
        return SequentialEvaluator(spec, variables, data, recipe)
    from deft_jax.evolution.evaluators.population import PopulationEvaluator
    if mode not in ("vmap", "vmap-1", "sharded"):
        raise ValueError(f"unknown evaluation mode {mode!r}")
    return PopulationEvaluator(spec, variables, data, recipe, sharded=mode == "sharded",
                               members_per_program=1 if mode == "vmap-1" else None,
                               memory_limit_bytes=memory_limit_bytes)


MAX_AUTO_WORKERS = 8  # measured on 2 cores only; each worker holds its own model and data


def pick_workers(cfg: Config, mode: str, cores: int | None = None) -> tuple[int, str]:
    """(worker processes, reason) for `search.workers`; 0 (auto): one per CPU core of this
    process (at most the population and MAX_AUTO_WORKERS) where workers can run - the cpu
    backend in one process, a `sequential` or `vmap-1` mode, one fold - else 1 (members in
    this process). On 2 cores, 2 workers ran the declared DEFT's search 1.2x as fast."""
    if cfg.search.workers != 0:
        return cfg.search.workers, ""
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    if jax.default_backend() != "cpu" or jax.process_count() > 1 or cores < 2:
        return 1, ""
    if mode not in ("sequential", "vmap-1") or cfg.search.folds > 1:
        return 1, ""
    n = min(cores, cfg.search.population_size, MAX_AUTO_WORKERS)
    return n, f"search.workers auto: {n} of {cores} CPU cores"


def make_evaluator(cfg: Config, spec: ModelSpec, variables: dict,
                   data: SplitArrays) -> tuple[Evaluator, str, str]:
    """(evaluator, mode, reason) for a run's config; `auto` resolved for this machine;
    `search.workers` > 1 (or 0, auto, on a multi-core CPU: `pick_workers`): that mode in
    worker processes, one CPU core each."""
    mode, reason = pick_mode(cfg.search.evaluation)
    workers, why = pick_workers(cfg, mode)
    if workers > 1:
        from deft_jax.evolution.evaluators.workers import INNER_MODES, WorkerPoolEvaluator
        if cfg.search.folds > 1:
            raise UserError("search.folds > 1 runs in this process for now; use search.workers = 1 with it")
        if jax.default_backend() != "cpu" or mode not in INNER_MODES:
            raise UserError(f"search.workers = {workers} scores members one per CPU core; it "
                            f"needs the cpu backend and search.evaluation auto, sequential or vmap-1 "
                            f"(here: {jax.default_backend()}, {mode})")
        evaluator = WorkerPoolEvaluator(spec, variables, data, fitness_recipe(cfg), mode=mode,
                                        workers=workers, model=(cfg.model.name, cfg.model.granularity))
        return evaluator, mode, f"{reason}; {why or 'requested'}: {workers} worker processes, one core each"
    # the model's and population's size decide how many members share a program
    limit = device_memory_limit() if mode != "sequential" else None
    recipe = fitness_recipe(cfg)
    if cfg.search.folds > 1:  # k-fold fitness over train+val: one evaluator per fold
        evaluator = folded_evaluator(cfg, spec, variables, data, lambda start, split: build_evaluator(
            mode, spec, start, split, recipe, memory_limit_bytes=limit))
        return evaluator, mode, f"{reason}; {cfg.search.folds}-fold fitness over train+val, one after another"
    evaluator = build_evaluator(mode, spec, variables, data, recipe, memory_limit_bytes=limit)
    return evaluator, mode, reason
