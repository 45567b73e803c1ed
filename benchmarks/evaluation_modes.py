"""Fitness evaluations per second of each evaluation strategy against population size.

    python benchmarks/evaluation_modes.py [--quick] [--models resnet20,efficientnet_lite0]
                                    [--sizes 4,8,16] [--strategies sequential,vmap,...]

Strategies: `sequential` (static masks, compiled per distinct mask), `vmap` (the whole
population in one traced-mask program), `vmap-1` (the same traced-mask program for one
member, run member after member: compiles once for all masks), and `sharded` (the
population split over all devices; only with more than one device).

Models use random init (speed does not depend on the weights) on synthetic data. For
every (model, strategy, size) a fresh evaluator makes three calls:
  warm-up: P random masks (compiles and first run),
  steady:  P *new* random masks (what a search generation costs; the sequential strategy
           compiles a program per new mask here, the population programs do not),
  repeat:  the same P masks again (execution only; skipped when `steady` compiled nothing).
Writes benchmarks/results/strategies-<date>-<host>.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# compile times are measured cold: no persistent compilation cache (see deft_jax.runtime.compile_cache)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
import jax  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from deft_jax.config.schema import FineTuneConfig  # noqa: E402
from deft_jax.evolution.evaluators.recipe import FitnessRecipe  # noqa: E402
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator  # noqa: E402
from deft_jax.data.inputs import SplitArrays  # noqa: E402
from deft_jax.evolution.evaluators.choice import device_memory_limit  # noqa: E402
from deft_jax.core.masks import decode_genome, searchable_groups  # noqa: E402
from deft_jax.models import build_model  # noqa: E402
from deft_jax.evolution.evaluators.population import PopulationEvaluator  # noqa: E402

INPUT_SIZES = {"resnet20": 32, "efficientnet_lite0": 96}


def machine() -> dict:
    devices = jax.devices()
    return {"host": socket.gethostname(), "cpu_model": cpu_model(),
            "cpu_cores": os.cpu_count(),
            "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "device_count": len(devices),
            "device_kinds": sorted({d.device_kind for d in devices}),
            "process_count": jax.process_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def make_evaluator(strategy: str, spec, variables, data, cfg):
    """As deft_jax.evolution.evaluators.choice builds them, memory limit included (a population program that
    does not fit runs as several smaller ones, reported as members_per_program)."""
    if strategy == "sequential":
        return SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg))
    limit = device_memory_limit()
    if strategy == "vmap":
        return PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), memory_limit_bytes=limit)
    if strategy == "vmap-1":
        return PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), members_per_program=1, memory_limit_bytes=limit)
    if strategy == "sharded":
        return PopulationEvaluator(spec, variables, data, FitnessRecipe(cfg), sharded=True, memory_limit_bytes=limit)
    raise ValueError(strategy)


def timed(evaluator, masks) -> tuple[float, int]:
    before = evaluator.stats()["compiles"]
    t0 = time.perf_counter()
    fitness = evaluator.evaluate(masks)
    seconds = time.perf_counter() - t0
    assert len(fitness) == len(masks) and all(np.isfinite(fitness))
    return seconds, evaluator.stats()["compiles"] - before


def run_one(model: str, strategy: str, size: int, args) -> dict:
    input_size = INPUT_SIZES[model]
    spec = build_model(model, args.classes, "none", input_size)
    variables = spec.init(0)
    rng = np.random.default_rng(0)
    n = args.train + args.val
    x = rng.normal(size=(n, input_size, input_size, 3)).astype(np.float32)
    y = rng.integers(0, args.classes, n).astype(np.int32)
    data = SplitArrays(x[:args.train], y[:args.train], x[args.train:], y[args.train:], args.classes)
    cfg = FineTuneConfig(batch_size=args.batch_size, epochs=args.epochs, learning_rate=0.01)
    genes = len(searchable_groups(spec.group_names))
    mask_rng = np.random.default_rng([size, 1])  # the same masks for every strategy
    masks = [decode_genome(mask_rng.random(genes), spec.group_names) for _ in range(2 * size)]
    evaluator = make_evaluator(strategy, spec, variables, data, cfg)
    warm, warm_compiles = timed(evaluator, masks[:size])
    steady, steady_compiles = timed(evaluator, masks[size:])
    repeat = timed(evaluator, masks[size:])[0] if steady_compiles else steady
    return {"model": model, "input_size": input_size, "searchable_groups": genes,
            "strategy": strategy, "population": size,
            "warmup_seconds": round(warm, 3), "warmup_compiles": warm_compiles,
            "steady_seconds": round(steady, 3), "steady_compiles": steady_compiles,
            "repeat_seconds": round(repeat, 3),
            "evals_per_second_steady": round(size / steady, 4),
            "evals_per_second_repeat": round(size / repeat, 4),
            "members_per_program": evaluator.stats().get("members_per_program")}


def markdown(rows: list[dict]) -> str:
    head = ("| model | strategy | P | warm-up s | steady s (new masks) | compiles in steady | "
            "evals/s steady | evals/s execution only |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['strategy']} | {r['population']} | skipped: "
                         f"{r['skipped']} | | | | |")
            continue
        mpp = r.get("members_per_program")
        strategy = r["strategy"] + (f" ({mpp} per program)" if mpp and r["strategy"] != "vmap-1" else "")
        lines.append(f"| {r['model']} {r['input_size']}px | {strategy} | {r['population']} | "
                     f"{r['warmup_seconds']:.1f} | {r['steady_seconds']:.1f} | {r['steady_compiles']} | "
                     f"{r['evals_per_second_steady']:.3f} | {r['evals_per_second_repeat']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="short run: population 4 only, 64 train / 32 val images")
    p.add_argument("--models", default="resnet20,efficientnet_lite0")
    p.add_argument("--sizes", help="population sizes (default 4,8,16; --quick: 4)")
    p.add_argument("--strategies", help="default: sequential,vmap,vmap-1 (+ sharded with >1 device)")
    p.add_argument("--train", type=int, help="training images (default 256; --quick: 64)")
    p.add_argument("--val", type=int, help="validation images (default 64; --quick: 32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="skip the remaining runs once this much time has passed")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in (args.sizes or ("4" if args.quick else "4,8,16")).split(",")]
    args.train = args.train or (64 if args.quick else 256)
    args.val = args.val or (32 if args.quick else 64)
    strategies = (args.strategies.split(",") if args.strategies else
                  ["sequential", "vmap", "vmap-1"] + (["sharded"] if jax.device_count() > 1 else []))
    if "sharded" in strategies and jax.device_count() < 2:
        print("note: sharded on one device is the vmap program plus sharding overhead", file=sys.stderr)

    info = machine()
    print(f"# {info['cpu_model']} ({info['cpu_cores']} cores), jax {info['jax']}, "
          f"{info['backend']} x{info['device_count']} {info['device_kinds']}", flush=True)
    rows, t_start = [], time.perf_counter()
    for model in args.models.split(","):
        for size in args.sizes:
            for strategy in strategies:
                if args.max_seconds and time.perf_counter() - t_start > args.max_seconds:
                    rows.append({"model": model, "strategy": strategy, "population": size,
                                 "skipped": "time budget"})
                    continue
                try:
                    row = run_one(model, strategy, size, args)
                except Exception as err:  # noqa: BLE001 - a failed row (e.g. out of memory) is a result
                    row = {"model": model, "strategy": strategy, "population": size,
                           "skipped": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
                rows.append(row)
                print(json.dumps(row), flush=True)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"strategies-{stamp}-{info['host']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"quick": args.quick, "train_images": args.train, "val_images": args.val,
                "batch_size": args.batch_size, "epochs": args.epochs, "classes": args.classes,
                "weights": "random init (none)", "prefix_cache": True,
                "total_seconds": round(time.perf_counter() - t_start, 1)}
    out.write_text(json.dumps({"machine": info, "settings": settings, "results": rows}, indent=2) + "\n")
    print()
    print(markdown(rows))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
