"""Side-by-side benchmark of the whole DEFT search: deft_jax vs an idiomatic PyTorch reference.

    python benchmarks/vs_pytorch.py --config configs/bench_resnet20_digits.toml \
        [--strategies auto,sequential,vmap] [--out benchmarks/results/DATE-MACHINE.json]

What runs, each side in its own process (so peak RSS is per side, not mixed):

1. deft_jax, once per strategy: the real search (`deft_jax.evolution.run_search`, DE from
   evosax) with the strategy's evaluator, recording every distinct mask it evaluates, in
   order. The first strategy's mask list (`auto` by default) is the reference list.
2. PyTorch (`benchmarks/torch_reference.py`): replays exactly that mask list, one member
   after another, from the same pretrained weights, the same initial head (copied from
   the JAX variables), the same data, batch order and recipe.

Reported per side: whole-search wall time (JAX: the DE loop including evosax's ask/tell;
PyTorch: the replay of the same masks, i.e. evaluations only, which favours PyTorch),
setup time, time to first result, compile seconds (JAX, from jax.monitoring's trace /
lowering / backend-compile events), seconds per fitness evaluation, evaluations/s, peak
RSS, and per mask both fitnesses (mean |difference|, Spearman and Kendall tau-b of the
masks' fitness ranks). `speedup_vs_pytorch` = PyTorch wall time / deft_jax wall time over
the same masks, for the first strategy. A step profile compares one fine-tune train step
on both sides, with FLOPs from XLA's cost analysis and the machine's estimated peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NO_PREFIX = "sequential-noprefix"  # sequential without the frozen-prefix feature cache
KNOWN_STRATEGIES = ("auto", "sequential", "vmap", "vmap-1", "sharded", NO_PREFIX)


# ------------------------------------------------------------------------------------------
# machine


def cpu_info() -> dict:
    """CPU model, cores, clock, SIMD flags and an estimated fp32 peak (assumption stated)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name):
        m = re.search(rf"^{name}\s*:\s*(.*)$", text, re.M)
        return m.group(1).strip() if m else None

    flags = set((field("flags") or "").split())
    vendor, family = field("vendor_id") or "", int(field("cpu family") or 0)
    mhz = float(field("cpu MHz") or 0.0)
    cores = os.cpu_count() or 1
    # fp32 FLOPs per cycle per core, assuming two FMA pipes:
    if "avx512f" in flags and vendor == "AuthenticAMD" and family == 25:
        per_cycle, why = 32, "AVX-512 on AMD Zen 4 (family 25) runs on 2x256-bit FMA pipes: 2 x 8 lanes x 2"
    elif "avx512f" in flags:
        per_cycle, why = 64, "AVX-512 with 2 FMA units: 2 x 16 lanes x 2"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, why = 32, "AVX2 + FMA with 2 FMA units: 2 x 8 lanes x 2"
    elif "avx" in flags:
        per_cycle, why = 16, "AVX without FMA: 8-lane add + 8-lane mul"
    else:
        per_cycle, why = 8, "SSE: 4-lane add + 4-lane mul"
    peak = cores * mhz * 1e6 * per_cycle
    return {
        "model": field("model name") or platform.processor(), "vendor": vendor,
        "family": family, "model_id": field("model"), "logical_cores": cores,
        "threads_per_core": _lscpu("Thread(s) per core"), "mhz": mhz,
        "simd": sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f", "avx512_bf16")),
        "peak_fp32_gflops": round(peak / 1e9, 1),
        "peak_assumption": (f"{cores} logical cores x {mhz:.0f} MHz (/proc/cpuinfo, no turbo) x "
                            f"{per_cycle} fp32 FLOPs/cycle ({why}); a theoretical upper bound"),
    }


def _lscpu(key: str):
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(rf"^{re.escape(key)}:\s*(.*)$", out, re.M)
    return m.group(1).strip() if m else None


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            return out or None
        except (OSError, subprocess.SubprocessError):
            return None
    return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "evosax", "numpy", "torch",
                 "efficientnet-lite-pytorch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class OtherLoad:
    """CPU time used by *other* processes while a side runs: busy time of the whole machine
    (/proc/stat) minus this process's own (and its children's) CPU time, in cores."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), self._own()

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def cores(self) -> float | None:
        busy = self._busy()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return round(max(busy - self.busy0 - (self._own() - self.own0), 0.0) / max(wall, 1e-9), 2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------------
# the deft_jax side (its own process)


class CompileClock:
    """Sums jax.monitoring's compile events (tracing, lowering to MLIR, XLA compile)."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        import jax.monitoring
        self.total = 0.0
        self.backend_compiles = 0
        self.by_function: dict[str, float] = {}
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event, duration, **kwargs):
        if event in self.EVENTS:
            self.total += duration
            name = str(kwargs.get("fun_name", "?"))
            self.by_function[name] = self.by_function.get(name, 0.0) + duration
            if event == self.EVENTS[2]:
                self.backend_compiles += 1


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
        from deft_jax.masks import mask_key
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
        from deft_jax.training import first_trainable_stage
        spec = self.spec
        first = first_trainable_stage(spec, mask)
        trained = sum(1 for i in range(len(spec.stage_names)) if mask[spec.net.group_of_stage(i)])
        return {"first_stage": first, "stages_trained": trained, "stages": len(spec.stage_names)}

    def evaluate(self, masks):
        if self.inner.name in ("sequential", "vmap-1"):  # one member at a time: time each
            return [self._one(self.inner.evaluate, [m])[0] for m in masks]
        return self._one(self.inner.evaluate, list(masks))

    def stats(self):
        return self.inner.stats()


def _flatten(tree, prefix=()) -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if hasattr(v, "items"):
            out.update(_flatten(v, (*prefix, k)))
        else:
            out["/".join((*prefix, k))] = np.asarray(v)
    return out


def _profile_masks(group_names) -> dict[str, str]:
    """Masks whose single train step both sides time: every group (the heaviest step), only
    the last searchable group + head (where the prefix cache matters most), and a mixed mask
    (every other group from the second on: frozen groups below, between and above)."""
    n = len(group_names)
    mixed = "".join("1" if i % 2 == 1 else "0" for i in range(n - 1)) + "1"
    return {"all groups": "1" * n, "last group + head": "0" * (n - 2) + "11", "mixed": mixed}


def _step_inputs(spec, variables, features, data, mask, start: int, gated: bool, size: int = 1):
    """(step model, state, flags, x, y) of one train step from stage `start` (public core API)."""
    import jax
    import jax.numpy as jnp
    from deft_jax import training

    tx = training.make_optimizer(data["cfg"])
    model = training.StepModel.of(spec, tx, start, data["cfg"].compute_dtype)
    params = training.suffix(variables["params"], spec, start)
    stats = training.suffix(variables["batch_stats"], spec, start)
    flags = ({g: jnp.full((size,), 1.0 if on else 0.0, jnp.float32) for g, on in mask.items()}
             if gated else dict(mask))
    one = training.init_state(model, params, stats, {g: 0.5 for g in mask} if gated else mask)
    state = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (size,) + jnp.shape(a)), one) \
        if gated else jax.tree.map(jnp.asarray, one)
    bs = min(data["cfg"].batch_size, len(features))
    return model, state, flags, jnp.asarray(features[:bs]), jnp.asarray(data["y_train"][:bs])


def _time(fn, args, steps: int) -> list[float]:
    import jax
    times = []
    for i in range(steps + 2 if steps else 0):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return times


def jax_step_profile(spec, variables, prefix, data: dict, masks: dict[str, str], steps: int = 10,
                     cache_prefix: bool = True) -> dict:
    """Per-step time and XLA FLOPs of one static-mask train step (`training.train_step` with
    Python-bool flags: only trainable leaves differentiated), from the mask's first trainable
    stage on cached features (`prefix`: a PrefixFeatureCache) when `cache_prefix`."""
    import jax
    import jax.numpy as jnp
    from deft_jax import training
    from deft_jax.masks import mask_from_key

    out = {}
    for label, key in masks.items():
        mask = mask_from_key(key, spec.group_names)
        start = training.first_trainable_stage(spec, mask) if cache_prefix else 0
        x_train, _ = prefix.features(start)
        model, state, flags, x, y = _step_inputs(spec, variables, x_train, data, mask, start, gated=False)
        step = jax.jit(lambda s, xb, yb, m=model, f=flags: training.train_step(m, s, f, xb, yb))
        compiled = step.lower(state, x, y).compile()
        flops = full_flops = _xla_flops(compiled)
        if start > 0:  # the same mask's step run from the input (what the PyTorch step does)
            m0, s0, f0, x0, y0 = _step_inputs(spec, variables, data["x_train"], data, mask, 0, gated=False)
            full = jax.jit(lambda s, xb, yb: training.train_step(m0, s, f0, xb, yb))
            full_flops = _xla_flops(full.lower(s0, x0, y0).compile())
        times = _time(compiled, (state, x, y), steps)
        out[label] = {"mask": key, "start_stage": start,
                      "median_step_s": float(np.median(times)) if times else None,
                      "min_step_s": float(np.min(times)) if times else None, "xla_flops": flops,
                      "xla_flops_from_input": full_flops}
        if start == 0 and steps:  # where a step's time goes: its forward alone (BN in train mode)
            net = spec.net
            fwd = jax.jit(lambda v, xb: net.apply(v, xb, train=True, mutable=["batch_stats"])[0])
            fwd_times = _time(fwd, ({"params": variables["params"], "batch_stats": variables["batch_stats"]},
                                    jnp.asarray(x_train[:x.shape[0]])), steps)
            out[label]["median_forward_s"] = float(np.median(fwd_times))
    return out


def population_step_profile(spec, variables, prefix, data: dict, masks: dict[str, str], static: dict,
                            members: int, steps: int = 10) -> dict:
    """Per-step time of the gated train step of a population program (`members` copies of
    the mask, traced gates, vmapped), from the mask's first trainable stage. FLOPs: the
    static step's XLA count times the members (the frozen groups' weight gradients that a
    gated step also computes are not counted)."""
    import jax
    from deft_jax import training
    from deft_jax.masks import mask_from_key

    out = {}
    for label, key in masks.items():
        mask = mask_from_key(key, spec.group_names)
        start = training.first_trainable_stage(spec, mask)
        x_train, _ = prefix.features(start)
        model, state, gates, x, y = _step_inputs(spec, variables, x_train, data, mask, start, gated=True,
                                                 size=members)
        step = jax.jit(jax.vmap(lambda s, g, xb, yb: training.train_step(model, s, g, xb, yb),
                                in_axes=(0, 0, None, None)))
        times = _time(step, (state, gates, x, y), steps)
        flops = static.get(label, {}).get("xla_flops")
        out[label] = {"mask": key, "start_stage": start, "members_per_program": members,
                      "median_step_s": float(np.median(times)), "min_step_s": float(min(times)),
                      "xla_flops": flops * members if flops else None,
                      "static_xla_flops_from_input": static.get(label, {}).get("xla_flops_from_input")}
    return out


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def run_jax_worker(config: str, strategy: str, workdir: Path, export: bool) -> dict:
    t_start = time.perf_counter()
    clock = CompileClock()
    import jax

    from deft_jax.config import load_config
    from deft_jax.data import load_dataset
    from deft_jax.fitness import SequentialEvaluator
    from deft_jax.inputs import prepare_data
    from deft_jax.models import build_model
    from deft_jax.evaluators import make_evaluator
    from deft_jax.evolution import run_search
    from deft_jax.fitness import PrefixFeatureCache

    cfg = load_config(config)
    requested = "sequential" if strategy == NO_PREFIX else strategy
    cfg.search.evaluation = requested
    dataset = load_dataset(cfg.data.source)
    spec = build_model(cfg.model.name, len(dataset.class_names), cfg.model.weights,
                       cfg.model.input_size, cfg.model.granularity)
    data = prepare_data(cfg, spec, dataset)
    variables = spec.init(jax.random.key(cfg.seed))
    if strategy == NO_PREFIX:
        inner = SequentialEvaluator(spec, variables, data.arrays, cfg.finetune,
                                    metric=cfg.search.metric, seed=cfg.seed, cache_prefix=False)
        resolved, reason = "sequential", "frozen-prefix feature cache off"
    else:
        inner, resolved, reason = make_evaluator(cfg, spec, variables, data.arrays)
    setup_s = time.perf_counter() - t_start
    setup_compile_s = clock.total
    load0 = loadavg()

    recorder = RecordingEvaluator(inner, clock, spec)
    other = OtherLoad()
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    recorder.t0 = t0
    log = lambda s: print(f"  [{strategy}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    result = run_search(cfg, recorder, spec.layer_groups, state_path=None, log=log)
    search_s = time.perf_counter() - t0
    search_cpu_s = cpu_seconds() - cpu0
    search_compile_s = clock.total - setup_compile_s
    load1 = loadavg()
    other_cores = other.cores()

    fitness = [result.memo[k] for k in recorder.masks]
    a = data.arrays
    prefix = PrefixFeatureCache(spec, variables, a)
    profile_data = {"cfg": cfg.finetune, "x_train": a.x_train, "y_train": a.y_train}
    masks = _profile_masks(spec.group_names)
    if resolved == "sequential":
        step_profile = jax_step_profile(spec, variables, prefix, profile_data, masks,
                                        cache_prefix=strategy != NO_PREFIX)
    else:  # population programs: FLOPs from a static step's count
        static = jax_step_profile(spec, variables, prefix, profile_data, masks, steps=0)
        members = 1 if resolved == "vmap-1" else cfg.search.population_size
        step_profile = population_step_profile(spec, variables, prefix, profile_data, masks, static,
                                               members)
    out = {
        "side": "deft_jax", "strategy": strategy, "resolved": resolved, "reason": reason,
        "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "setup_s": setup_s, "search_s": search_s, "search_cpu_s": search_cpu_s,
        "evaluation_s": sum(r["eval_s"] for r in recorder.records),
        "compile_s": search_compile_s, "setup_compile_s": setup_compile_s,
        "backend_compiles": clock.backend_compiles,
        "compile_by_function": {k: round(v, 3) for k, v in sorted(
            clock.by_function.items(), key=lambda kv: -kv[1])[:8]},
        "first_result_s": recorder.records[0]["done_s"] if recorder.records else None,
        "first_result_compile_s": recorder.records[0]["compile_s"] if recorder.records else None,
        "masks": recorder.masks, "fitness": fitness, "records": recorder.records,
        "best_mask": "".join("1" if result.best_mask[g] else "0" for g in spec.group_names),
        "best_fitness": result.best_fitness, "evaluator_stats": inner.stats(),
        "step_profile": step_profile, "loadavg": [load0, load1], "other_cores": other_cores,
        "peak_rss_mb": peak_rss_mb(),
    }
    if export:  # everything the PyTorch side needs, so it never imports JAX
        from deft_jax.training import batch_plan
        plan = np.stack(batch_plan(len(a.x_train), cfg.finetune.batch_size, cfg.finetune.epochs, cfg.seed))
        np.savez(workdir / "arrays.npz", x_train=a.x_train, y_train=a.y_train, x_val=a.x_val,
                 y_val=a.y_val, plan=plan)
        np.savez(workdir / "variables.npz", **_flatten(jax.tree.map(np.asarray, variables)))
        meta = {"model": dataclasses.asdict(cfg.model), "pretrained": spec.pretrained,
                "num_classes": a.num_classes, "group_names": list(spec.group_names),
                "finetune": dataclasses.asdict(cfg.finetune), "seed": cfg.seed,
                "metric": cfg.search.metric, "masks": recorder.masks,
                "profile_masks": _profile_masks(spec.group_names)}
        (workdir / "meta.json").write_text(json.dumps(meta, indent=1))
    return out


# ------------------------------------------------------------------------------------------
# comparison


def _rank_correlation(test, a, b) -> float | None:
    """scipy's statistic, or None where it is undefined (fewer than 2 masks, or all
    fitnesses equal on one side)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(test(a, b).statistic)


def spearman(a, b) -> float | None:
    from scipy.stats import spearmanr
    return _rank_correlation(spearmanr, a, b)


def kendall_tau_b(a, b) -> float | None:
    from scipy.stats import kendalltau  # tau-b: ties on either side are accounted for
    return _rank_correlation(kendalltau, a, b)


def compare_fitness(ours: dict, theirs: dict) -> dict:
    """Per-mask fitness agreement on the masks both sides evaluated."""
    a = dict(zip(ours["masks"], ours["fitness"]))
    b = dict(zip(theirs["masks"], theirs["fitness"]))
    common = [k for k in theirs["masks"] if k in a]
    fa = np.array([a[k] for k in common])
    fb = np.array([b[k] for k in common])
    diff = np.abs(fa - fb)
    return {
        "masks_compared": len(common),
        "same_mask_sequence": ours["masks"] == theirs["masks"],
        "mean_abs_diff": float(diff.mean()) if len(common) else None,
        "max_abs_diff": float(diff.max()) if len(common) else None,
        "fraction_equal": float(np.mean(diff < 1e-9)) if len(common) else None,
        "spearman": spearman(fa, fb), "kendall_tau_b": kendall_tau_b(fa, fb),
        "best_mask_ours": common[int(np.argmin(fa))] if len(common) else None,
        "best_mask_theirs": common[int(np.argmin(fb))] if len(common) else None,
    }


def side_row(r: dict) -> dict:
    n = len(r["masks"])
    recs = r.get("records", [])
    steady = [x["eval_s"] - x.get("compile_s", 0.0) for x in recs]
    return {
        "masks": n, "setup_s": r["setup_s"], "search_s": r["search_s"],
        "evaluation_s": r["evaluation_s"], "compile_s": r.get("compile_s"),
        "first_result_s": r["first_result_s"],
        "s_per_eval": r["evaluation_s"] / n if n else None,
        "evals_per_s": n / r["search_s"] if r["search_s"] else None,
        "s_per_eval_without_compile": float(np.mean(steady)) if steady else None,
        "peak_rss_mb": r["peak_rss_mb"], "other_cores": r.get("other_cores"),
    }


def _f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown(summary: dict) -> str:
    lines = ["| side | strategy | masks | setup s | whole search s | compile s | first result s "
             "| s/eval | evals/s | s/eval excl. compile | peak RSS MB | other procs' load (cores) "
             "| fitness vs PyTorch: mean abs diff / Spearman / Kendall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in summary["rows"]:
        cmp_ = row.get("fitness_vs_pytorch") or {}
        agree = "-" if not cmp_ else (f"{_f(cmp_['mean_abs_diff'], '.4f')} / {_f(cmp_['spearman'], '.3f')} / "
                                      f"{_f(cmp_['kendall_tau_b'], '.3f')}"
                                      + ("" if cmp_["same_mask_sequence"] else f" ({cmp_['masks_compared']} shared masks)"))
        lines.append(
            f"| {row['side']} | {row['strategy']} | {row['masks']} | {_f(row['setup_s'], '.1f')} | "
            f"{_f(row['search_s'], '.1f')} | {_f(row['compile_s'], '.1f')} | {_f(row['first_result_s'], '.1f')} | "
            f"{_f(row['s_per_eval'])} | {_f(row['evals_per_s'], '.3f')} | {_f(row['s_per_eval_without_compile'])} | "
            f"{_f(row['peak_rss_mb'], '.0f')} | {_f(row.get('other_cores'))} | {agree} |")
    if summary.get("where_time_goes"):
        lines += ["", "Where the time goes (seconds):", ""]
        for side, parts in summary["where_time_goes"].items():
            shown = ", ".join(f"{k} {v}" for k, v in parts.items() if not isinstance(v, dict))
            lines.append(f"- {side}: {shown}")
            for k, v in parts.items():
                if isinstance(v, dict):
                    lines.append(f"  - {k}: " + ", ".join(f"{n} {t}" for n, t in v.items()))
    for note in summary["notes"]:
        lines.append(f"\n- {note}")
    if summary.get("step_profile"):
        lines += ["", "| train step | side | mask | first stage run | s/step median (min) "
                  "| of which forward s | XLA GFLOP/step | GFLOP/s at median | % of est. peak |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for p in summary["step_profile"]:
            lines.append(f"| {p['label']} | {p['side']} | {p['mask']} | {p.get('start_stage', 0)} | "
                         f"{_f(p['median_step_s'], '.4f')} ({_f(p['min_step_s'], '.4f')}) | "
                         f"{_f(p.get('median_forward_s'), '.4f')} | "
                         f"{_f(p.get('gflop'), '.2f')} | {_f(p.get('gflops'), '.1f')} | {_f(p.get('pct_peak'), '.1f')} |")
        lines.append("\n(forward: the same batch through the network alone, BatchNorm in train mode, no "
                     "gradients; the rest of a step is the backward pass and the optimizer update.)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# orchestration


def _population_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("deft_jax.population") is not None


def _run(cmd: list[str], label: str) -> None:
    print(f"== {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    # every side starts cold: no persistent compilation cache (see deft_jax.compile_cache)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["DEFT_JAX_COMPILE_CACHE"] = "off"
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed with exit code {proc.returncode}")


def orchestrate(args) -> dict:
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in KNOWN_STRATEGIES]
    if bad:
        raise SystemExit(f"unknown strategies {bad}; known: {', '.join(KNOWN_STRATEGIES)}")
    notes, skipped = [], []
    if not _population_available():
        for s in ("vmap", "sharded"):
            if s in strategies:
                strategies.remove(s)
                skipped.append(s)
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: deft_jax.population is not present in this tree")
    workdir = Path(tempfile.mkdtemp(prefix="vs_pytorch-"))
    me = str(Path(__file__).resolve())
    t_all = time.perf_counter()
    jax_results = []
    for i, strategy in enumerate(strategies):
        # auto picks one of the concrete strategies: a concrete one it already ran is the
        # same code path, so its run is reused (and said so) unless --no-dedupe
        done = next((r for r in jax_results if r["resolved"] == strategy
                     and NO_PREFIX not in (strategy, r["strategy"])), None)
        if done is not None and not args.no_dedupe:
            notes.append(f"{strategy}: the same evaluator as {done['strategy']} on this backend "
                         f"({done['strategy']} -> {done['resolved']}); its row repeats that run's numbers")
            jax_results.append({**done, "strategy": strategy, "reused_from": done["strategy"]})
            continue
        out = workdir / f"jax-{strategy}.json"
        cmd = [sys.executable, me, "--config", args.config, "--worker", "jax", "--strategy", strategy,
               "--workdir", str(workdir), "--result", str(out)] + (["--export"] if i == 0 else [])
        try:
            _run(cmd, f"deft_jax {strategy}")
        except RuntimeError as err:
            if i == 0:
                raise
            notes.append(f"{strategy}: {err}")
            continue
        jax_results.append(json.loads(out.read_text()))
    torch_results = []
    thread_counts = [int(t) for t in str(args.torch_threads or os.cpu_count() or 1).split(",") if t.strip()]
    # the idiomatic reference at each thread count, then a careful user's (frozen prefix cached)
    runs = [(t, False) for t in thread_counts] + [(thread_counts[0], True)]
    for threads, cache_prefix in runs:
        torch_out = workdir / f"torch-{threads}-{int(cache_prefix)}.json"
        load0 = loadavg()
        try:
            _run([sys.executable, str(REPO / "benchmarks" / "torch_reference.py"), "--inputs", str(workdir),
                  "--out", str(torch_out), "--threads", str(threads)] + (["--cache-prefix"] if cache_prefix else []),
                 f"pytorch reference, {threads} threads" + (", prefix cached" if cache_prefix else ""))
        except RuntimeError as err:
            if not cache_prefix:
                raise
            notes.append(f"pytorch with prefix cache: {err}")
            continue
        result = json.loads(torch_out.read_text())
        result["loadavg"] = [load0, loadavg()]
        torch_results.append(result)
    torch_result = torch_results[0]  # the headline: threads = cores unless told otherwise
    prefixed = next((t for t in torch_results if t.get("cache_prefix")), None)
    total_s = time.perf_counter() - t_all

    cpu = cpu_info()
    rows, step_profile = [], []
    reference = jax_results[0]
    for r in jax_results:
        name = r["strategy"] + (f" -> {r['resolved']}" if r["strategy"] != r["resolved"] else "")
        if r.get("reused_from"):
            name += f" (= {r['reused_from']} run)"
        rows.append({"side": "deft_jax", "strategy": name, **side_row(r),
                     "fitness_vs_pytorch": compare_fitness(r, torch_result)})
    for t in torch_results:
        how = "frozen prefix cached" if t.get("cache_prefix") else "requires_grad=False"
        rows.append({"side": "pytorch", "strategy": f"sequential, {how}, {t['threads']} threads",
                     **side_row(t)})

    def add_profile(side, prof, flops_of):
        for label, p in prof.items():
            flops = flops_of.get(label)
            entry = {"label": label, "side": side, **p}
            if flops and flops == flops:
                entry["gflop"] = flops / 1e9
                entry["gflops"] = flops / p["median_step_s"] / 1e9
                entry["pct_peak"] = 100 * entry["gflops"] / cpu["peak_fp32_gflops"] if cpu["peak_fp32_gflops"] else None
            step_profile.append(entry)

    for r in jax_results:
        prof = r.get("step_profile") or {}
        if r.get("reused_from") or "error" in prof:
            if "error" in prof:
                notes.append(f"{r['strategy']}: {prof['error']}")
            continue
        add_profile(f"deft_jax ({r['strategy']} -> {r['resolved']})" if r["strategy"] != r["resolved"]
                    else f"deft_jax ({r['strategy']})", prof,
                    {k: v.get("xla_flops") for k, v in prof.items()})
    # the PyTorch step runs the frozen prefix's forward too: its work is XLA's count of the
    # same mask's static step run from the input (no prefix cache)
    torch_flops = {}
    for r in jax_results:
        for label, v in (r.get("step_profile") or {}).items():
            if isinstance(v, dict):
                f = v.get("xla_flops_from_input") or v.get("static_xla_flops_from_input")
                if f and label not in torch_flops:
                    torch_flops[label] = f
    for t in torch_results:
        if t.get("cache_prefix"):  # its steps start at the first trainable stage, as ours do
            flops = {k: v.get("xla_flops") for k, v in (reference.get("step_profile") or {}).items()
                     if isinstance(v, dict)}
            add_profile(f"pytorch prefix cached ({t['threads']} threads)", t.get("step_profile", {}), flops)
        else:
            add_profile(f"pytorch ({t['threads']} threads)", t.get("step_profile", {}), torch_flops)
    speedup = torch_result["search_s"] / reference["search_s"]
    speedup_eval = torch_result["evaluation_s"] / reference["evaluation_s"]
    speedup_prefixed = prefixed["search_s"] / reference["search_s"] if prefixed else None
    fastest = min(torch_results, key=lambda t: t["search_s"])
    speedup_fastest = fastest["search_s"] / reference["search_s"]
    notes += [
        f"speedup_vs_pytorch = PyTorch ({torch_result['threads']} threads) whole-search wall / deft_jax "
        f"({reference['strategy']}) whole-search wall = {torch_result['search_s']:.1f} / "
        f"{reference['search_s']:.1f} = {speedup:.2f}x (evaluations only: {speedup_eval:.2f}x); both sides "
        f"evaluate the same {len(torch_result['masks'])} masks in the same order."
        + (f" Against the fastest PyTorch run ({fastest['threads']} threads): {speedup_fastest:.2f}x."
           if len(torch_results) > 1 else "")
        + (f" Against PyTorch with the frozen prefix cached (a careful user's reference): "
           f"{speedup_prefixed:.2f}x." if speedup_prefixed else ""),
        "deft_jax's whole-search time includes the DE loop (evosax ask/tell, its compiles); the PyTorch side "
        "only replays the masks, so its time has no search overhead at all.",
        "first result = wall time from the start of the search to the first fitness (deft_jax: includes "
        "compiling the first train step and the prefix/eval forward; population evaluators (vmap, vmap-1) "
        "return a whole generation's fitnesses at once, so theirs is the end of generation 0); setup "
        "(data, model, weights) is reported apart.",
        "train-step table: s/step is one optimizer step on one batch; for population programs it is the "
        "program's step for all its members (members_per_program in the JSON), timed as a short fine-tune "
        "(1 batch per epoch) divided by its steps; their FLOPs are the static step's XLA count x members (a gated step also "
        "computes frozen groups' weight gradients, not counted, so their GFLOP/s is a lower bound).",
        "PyTorch threads: torch.set_num_threads (default: all cores); JAX/XLA uses its default CPU thread pool.",
        f"peak: {cpu['peak_assumption']}.",
    ]
    breakdown = {}
    for r in jax_results:
        if r.get("reused_from"):
            continue
        breakdown[f"deft_jax {r['strategy']}"] = {
            "search": round(r["search_s"], 2),
            "compile (trace + lower + XLA, all functions)": round(r["compile_s"], 2),
            "evaluations excl. compile": round(r["evaluation_s"] - sum(x["compile_s"] for x in r["records"]), 2),
            "DE loop outside evaluations (ask/tell, memo, log)": round(r["search_s"] - r["evaluation_s"], 2),
            "compile by function": r["compile_by_function"]}
    for t in torch_results:
        recs = t["records"]
        breakdown[f"pytorch {t['threads']} threads" + (", prefix cached" if t.get("cache_prefix") else "")] = {
            "search": round(t["search_s"], 2),
            "fine-tune (deepcopy + steps)": round(sum(x["train_s"] for x in recs), 2),
            "validation forward": round(sum(x["val_s"] for x in recs), 2)}
    busy = [(r["side"] + " " + r["strategy"], r.get("other_cores")) for r in rows]
    if any(v is not None and v > 0.25 for _, v in busy):
        notes.append("WARNING: other processes used CPU while sides ran (" + ", ".join(
            f"{k}: {v} cores" for k, v in busy) + "); timings are contended and PyTorch's OpenMP "
            "threads suffer most from it: rerun on a quiet machine for clean numbers.")
    summary = {
        "date": dt.datetime.now().isoformat(timespec="seconds"), "config": args.config,
        "config_text": Path(args.config).read_text(),
        "machine": {"hostname": socket.gethostname(), "cpu": cpu, "gpu": gpu_name(),
                    "versions": versions(), "platform": platform.platform()},
        "speedup_vs_pytorch": round(speedup, 3),
        "speedup_vs_pytorch_evaluations_only": round(speedup_eval, 3),
        "speedup_vs_fastest_pytorch": round(speedup_fastest, 3),
        "speedup_vs_pytorch_prefix_cached": round(speedup_prefixed, 3) if speedup_prefixed else None,
        "pytorch_threads": [t["threads"] for t in torch_results],
        "reference_strategy": reference["strategy"], "skipped_strategies": skipped,
        "rows": rows, "step_profile": step_profile, "where_time_goes": breakdown, "notes": notes,
        "benchmark_wall_s": round(total_s, 1),
        "raw": {"deft_jax": [r for r in jax_results if not r.get("reused_from")],
                "pytorch": torch_results},
    }
    summary["markdown"] = markdown(summary)
    shutil.rmtree(workdir, ignore_errors=True)
    return summary


def default_out() -> Path:
    machine = re.sub(r"[^A-Za-z0-9]+", "-", f"{cpu_info()['model']}-{os.cpu_count()}cpu").strip("-").lower()
    gpu = gpu_name()
    if gpu:
        machine += "-" + re.sub(r"[^A-Za-z0-9]+", "-", gpu.splitlines()[0]).strip("-").lower()
    return REPO / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{machine}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="deft_jax vs an idiomatic PyTorch DEFT: the whole search, same masks.")
    p.add_argument("--config", required=True, help="TOML config (e.g. configs/bench_resnet20_digits.toml)")
    p.add_argument("--strategies", default="auto,sequential,vmap",
                   help=f"comma-separated, first is the reference ({', '.join(KNOWN_STRATEGIES)})")
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/<date>-<machine>.json)")
    p.add_argument("--torch-threads", help="torch.set_num_threads, comma-separated for several PyTorch "
                   "runs (default: all cores); the first is the headline")
    p.add_argument("--no-dedupe", action="store_true",
                   help="rerun a strategy even when auto already resolved to it")
    # internal: one side in its own process
    p.add_argument("--worker", choices=["jax"], help=argparse.SUPPRESS)
    p.add_argument("--strategy", help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker == "jax":
        result = run_jax_worker(args.config, args.strategy, args.workdir, args.export)
        args.result.write_text(json.dumps(result, indent=1))
        return 0

    summary = orchestrate(args)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(summary["markdown"])
    print(f"\nspeedup_vs_pytorch: {summary['speedup_vs_pytorch']:.2f}x  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
