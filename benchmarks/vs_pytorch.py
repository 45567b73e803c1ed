"""Side-by-side benchmark of the whole DEFT search: deft_jax vs an idiomatic PyTorch reference.

    python benchmarks/vs_pytorch.py --config configs/bench_resnet20_digits.toml \
        [--strategies auto,sequential,vmap] [--out benchmarks/results/DATE-MACHINE.json]

What runs, each side in its own process (so peak RSS is per side, not mixed):

1. deft_jax, once per strategy: the real search (`deft_jax.evolution.loop.run_search`, DE from
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
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.machine import loadavg, machine_slug  # noqa: E402
from benchmarks.vs_pytorch_report import summarize  # noqa: E402
from benchmarks.vs_pytorch_worker import KNOWN_STRATEGIES, NO_PREFIX, run_jax_worker, split_strategy  # noqa: E402


def _population_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("deft_jax.evolution.evaluators.population") is not None


def _run(cmd: list[str], label: str) -> None:
    print(f"== {label}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    # every side starts cold: no persistent compilation cache (see deft_jax.runtime.compile_cache)
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["DEFT_JAX_COMPILE_CACHE"] = "off"
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed with exit code {proc.returncode}")


def run_sides(args) -> dict:
    """Each deft_jax strategy, then each PyTorch run, in its own process; their raw results."""
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if split_strategy(s)[0] not in KNOWN_STRATEGIES]
    if bad:
        raise SystemExit(f"unknown strategies {bad}; known: {', '.join(KNOWN_STRATEGIES)}")
    notes, skipped = [], []
    if not _population_available():
        for s in ("vmap", "sharded"):
            if s in strategies:
                strategies.remove(s)
                skipped.append(s)
        if skipped:
            notes.append(f"skipped {', '.join(skipped)}: deft_jax.evolution.evaluators.population is not present in this tree")
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
            _run([sys.executable, str(REPO / "benchmarks" / "torch_reference_worker.py"),
                  "--inputs", str(workdir),
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
    return {"jax": jax_results, "torch": torch_results, "notes": notes, "skipped": skipped,
            "wall_s": time.perf_counter() - t_all, "workdir": workdir}


def default_out() -> Path:
    return REPO / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-{machine_slug()}.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="deft_jax vs an idiomatic PyTorch DEFT: the whole search, same masks.")
    p.add_argument("--config", required=True, help="TOML config (e.g. configs/bench_resnet20_digits.toml)")
    p.add_argument("--strategies", default="auto,sequential,vmap",
                   help=f"comma-separated, first is the reference ({', '.join(KNOWN_STRATEGIES)}; "
                        "MODE:N runs MODE in N worker processes, one core each, e.g. vmap-1:2)")
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

    runs = run_sides(args)
    try:
        summary = summarize(args.config, runs)
    finally:
        shutil.rmtree(runs["workdir"], ignore_errors=True)
    out = args.out or default_out()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    print(summary["markdown"])
    print(f"\nspeedup_vs_pytorch: {summary['speedup_vs_pytorch']:.2f}x  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
