"""The deft_jax side of `benchmarks/vs_pytorch.py`, run in its own process: the real DE
search with one evaluation strategy, recording every distinct mask in evaluation order,
the compile time spent, a step profile, and (for the first strategy) everything the
PyTorch side needs to replay the same masks without importing JAX."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import OtherLoad, cpu_seconds, loadavg, peak_rss_mb
from benchmarks.step_profile import jax_step_profile, population_step_profile

NO_PREFIX = "sequential-noprefix"  # sequential without the frozen-prefix feature cache
KNOWN_STRATEGIES = ("auto", "sequential", "vmap", "vmap-1", "sharded", NO_PREFIX)
# a strategy may end in ":N": the same evaluation mode in N worker processes, one core each
# (`search.workers`), e.g. "vmap-1:2"


def split_strategy(strategy: str) -> tuple[str, int]:
    """(evaluation mode, worker processes) of a strategy name such as "vmap-1:2"."""
    mode, _, workers = strategy.partition(":")
    return mode, int(workers) if workers else 1


class CompileClock:
    """The compile events (tracing, lowering to MLIR, XLA compile; `deft_jax.runtime.compile_log`)
    of the worker, one `CompileLog` per phase: setup, search, step profile (skipped with
    DEFT_BENCH_STEP_PROFILE=off, for compile measurements of the search alone)."""

    def __init__(self):
        from deft_jax.runtime.compile_log import CompileLog
        self.all = CompileLog().start()
        self.phases: dict = {}
        self.phase("setup")

    def phase(self, name: str):
        from deft_jax.runtime.compile_log import CompileLog
        for log in self.phases.values():
            log.stop()
        self.phases[name] = CompileLog().start()
        return self.phases[name]

    @property
    def total(self) -> float:
        return self.all.seconds()

    def report(self) -> dict:
        """Per phase: XLA programs, their seconds, and per function (programs, seconds)."""
        kinds = ("backend_compile_s", "trace_s", "lower_s", "backend_compile_cpu_s", "trace_cpu_s", "lower_cpu_s")
        return {name: {"programs": log.total_programs(), "cache_hits": log.cache_hits,
                       **{k: round(log.seconds(k), 3) for k in kinds}, "by_function": log.summary()}
                for name, log in self.phases.items()}


class RecordingEvaluator:
    """Wraps a strategy's evaluator: records each distinct mask in evaluation order, with
    the wall time its result was ready and the compile seconds spent while evaluating it."""

    def __init__(self, inner, clock: CompileClock, spec):
        self.inner, self.clock, self.spec = inner, clock, spec
        self.name = getattr(inner, "name", type(inner).__name__)
        self.masks: list[str] = []
        self.records: list[dict] = []
        self.t0 = time.perf_counter()

    def _one(self, evaluate, masks):
        from deft_jax.core.masks import mask_key
        c0, t0 = self.clock.total, time.perf_counter()
        values = evaluate(masks)
        c1, t1 = self.clock.total, time.perf_counter()
        for m in masks:
            self.masks.append(mask_key(m))
            self.records.append({"eval_s": (t1 - t0) / len(masks), "compile_s": (c1 - c0) / len(masks),
                                 "done_s": t1 - self.t0, "batch": len(masks), **self.work(m)})
        return values

    def work(self, mask) -> dict:
        """What the mask's fine-tune ran: its first trainable stage and the stages it trains."""
        from deft_jax.core.training import first_trainable_stage
        spec = self.spec
        first = first_trainable_stage(spec, mask)
        trained = sum(1 for i in range(len(spec.stage_names)) if mask[spec.net.group_of_stage(i)])
        return {"first_stage": first, "stages_trained": trained, "stages": len(spec.stage_names)}

    def evaluate(self, masks):
        one_at_a_time = self.inner.name in ("sequential", "vmap-1") and getattr(self.inner, "workers", 1) == 1
        if one_at_a_time:  # time each
            return [self._one(self.inner.evaluate, [m])[0] for m in masks]
        return self._one(self.inner.evaluate, list(masks))

    def stats(self):
        return self.inner.stats()


def flatten_tree(tree, prefix=()) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(flatten_tree(v, (*prefix, k)))
        else:
            out["/".join((*prefix, k))] = np.asarray(v)
    return out


def profile_masks(group_names) -> dict[str, str]:
    """Masks whose single train step both sides time: every group (the heaviest step), only
    the last searchable group + head (where the prefix cache matters most), and a mixed mask
    (every other group from the second on: frozen groups below, between and above)."""
    n = len(group_names)
    mixed = "".join("1" if i % 2 == 1 else "0" for i in range(n - 1)) + "1"
    return {"all groups": "1" * n, "last group + head": "0" * (n - 2) + "11", "mixed": mixed}


def run_jax_worker(config: str, strategy: str, workdir: Path, export: bool) -> dict:
    t_start = time.perf_counter()
    clock = CompileClock()
    import jax

    from deft_jax.config.schema import load_config
    from deft_jax.data import load_dataset
    from deft_jax.evolution.evaluators.recipe import FitnessRecipe
    from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
    from deft_jax.data.inputs import prepare_data
    from deft_jax.models import build_model
    from deft_jax.evolution.evaluators.choice import make_evaluator
    from deft_jax.evolution.loop import run_search
    from deft_jax.evolution.fitness import PrefixFeatureCache

    cfg = load_config(config)
    requested, workers = split_strategy("sequential" if strategy == NO_PREFIX else strategy)
    cfg.search.evaluation, cfg.search.workers = requested, workers
    dataset = load_dataset(cfg.data.source)
    spec = build_model(cfg.model.name, len(dataset.class_names), cfg.model.weights,
                       cfg.model.input_size, cfg.model.granularity)
    data = prepare_data(cfg, spec, dataset)
    variables = spec.init(cfg.seed)
    if strategy == NO_PREFIX:
        inner = SequentialEvaluator(spec, variables, data.arrays,
                                    FitnessRecipe(cfg.finetune, metric=cfg.search.metric, seed=cfg.seed,
                                                  cache_prefix=False))
        resolved, reason = "sequential", "frozen-prefix feature cache off"
    else:
        inner, resolved, reason = make_evaluator(cfg, spec, variables, data.arrays)
        if workers > 1:
            resolved = f"{resolved}:{workers}"
    setup_s = time.perf_counter() - t_start
    setup_compile_s = clock.total
    search_log = clock.phase("search")
    load0 = loadavg()

    recorder = RecordingEvaluator(inner, clock, spec)
    other = OtherLoad()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    recorder.t0 = t0
    progress = logging.StreamHandler(sys.stderr)  # the search's log lines, tagged, on stderr
    progress.setFormatter(logging.Formatter(f"  [{strategy}] %(message)s"))
    logger = logging.getLogger("deft_jax")
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        result = run_search(cfg, recorder, spec.layer_groups, state_path=None)
    finally:
        logger.removeHandler(progress)
    search_s = time.perf_counter() - t0
    search_cpu_s = cpu_seconds() - cpu0
    search_compile_s = clock.total - setup_compile_s
    load1 = loadavg()
    other_cores = other.cores()
    clock.phase("step_profile")

    fitness = [result.memo[k] for k in recorder.masks]
    a = data.arrays
    prefix = PrefixFeatureCache(spec, variables, a)
    profile_data = {"cfg": cfg.finetune, "x_train": a.x_train, "y_train": a.y_train}
    masks = profile_masks(spec.group_names)
    if os.environ.get("DEFT_BENCH_STEP_PROFILE", "on") == "off":  # the search alone
        step_profile = {}
    elif resolved.startswith("sequential"):
        step_profile = jax_step_profile(spec, variables, prefix, profile_data, masks,
                                        cache_prefix=strategy != NO_PREFIX)
    else:  # population programs: FLOPs from a static step's count
        static = jax_step_profile(spec, variables, prefix, profile_data, masks, steps=0)
        members = 1 if resolved.startswith("vmap-1") else cfg.search.population_size
        step_profile = population_step_profile(spec, variables, prefix, profile_data, masks, static,
                                               members)
    out = {
        "side": "deft_jax", "strategy": strategy, "resolved": resolved, "reason": reason,
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "setup_s": setup_s, "search_s": search_s, "search_cpu_s": search_cpu_s,
        "evaluation_s": sum(r["eval_s"] for r in recorder.records),
        "compile_s": search_compile_s, "setup_compile_s": setup_compile_s,
        # worker processes compile on their own cores: their seconds, summed over workers
        "worker_compile_s": inner.stats().get("worker_compile_s") if workers > 1 else None,
        "backend_compiles": search_log.total_programs(),
        "compile_by_function": {k: round(v["backend_compile_s"] + v["trace_s"] + v["lower_s"], 3)
                                for k, v in list(search_log.summary().items())[:8]},
        "search_programs": search_log.programs(),
        "first_result_s": recorder.records[0]["done_s"] if recorder.records else None,
        "first_result_compile_s": recorder.records[0]["compile_s"] if recorder.records else None,
        "masks": recorder.masks, "fitness": fitness, "records": recorder.records,
        "best_mask": "".join("1" if result.best_mask[g] else "0" for g in spec.group_names),
        "best_fitness": result.best_fitness, "evaluator_stats": inner.stats(),
        "step_profile": step_profile, "loadavg": [load0, load1], "other_cores": other_cores,
        "peak_rss_mb": peak_rss_mb(), "compiles": clock.report(),
    }
    if export:  # everything the PyTorch side needs, so it never imports JAX
        from deft_jax.data.batches import batch_plan
        plan = np.stack(batch_plan(len(a.x_train), cfg.finetune.batch_size, cfg.finetune.epochs, cfg.seed))
        np.savez(workdir / "arrays.npz", x_train=a.x_train, y_train=a.y_train, x_val=a.x_val,
                 y_val=a.y_val, plan=plan)
        np.savez(workdir / "variables.npz", **flatten_tree(jax.tree.map(np.asarray, variables)))
        meta = {"model": dataclasses.asdict(cfg.model), "pretrained": spec.pretrained,
                "num_classes": a.num_classes, "group_names": list(spec.group_names),
                "finetune": dataclasses.asdict(cfg.finetune), "seed": cfg.seed,
                "metric": cfg.search.metric, "masks": recorder.masks,
                "profile_masks": profile_masks(spec.group_names)}
        (workdir / "meta.json").write_text(json.dumps(meta, indent=1))
    return out
