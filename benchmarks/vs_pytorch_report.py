"""The report of `benchmarks/vs_pytorch.py`: per-mask fitness agreement (mean |difference|,
Spearman, Kendall tau-b), a row per side, the step profile against the machine's estimated
peak, where the time goes, the speedups with their notes, and the Markdown table."""

from __future__ import annotations

import datetime as dt
import platform
import socket
from pathlib import Path

import numpy as np

from benchmarks.machine import cpu_info, gpu_name, versions


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


def format_number(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def markdown(summary: dict) -> str:
    lines = ["| side | strategy | masks | setup s | whole search s | compile s | first result s "
             "| s/eval | evals/s | s/eval excl. compile | peak RSS MB | other procs' load (cores) "
             "| fitness vs PyTorch: mean abs diff / Spearman / Kendall |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in summary["rows"]:
        cmp_ = row.get("fitness_vs_pytorch") or {}
        agree = "-" if not cmp_ else (f"{format_number(cmp_['mean_abs_diff'], '.4f')} / {format_number(cmp_['spearman'], '.3f')} / "
                                      f"{format_number(cmp_['kendall_tau_b'], '.3f')}"
                                      + ("" if cmp_["same_mask_sequence"] else f" ({cmp_['masks_compared']} shared masks)"))
        lines.append(
            f"| {row['side']} | {row['strategy']} | {row['masks']} | {format_number(row['setup_s'], '.1f')} | "
            f"{format_number(row['search_s'], '.1f')} | {format_number(row['compile_s'], '.1f')} | {format_number(row['first_result_s'], '.1f')} | "
            f"{format_number(row['s_per_eval'])} | {format_number(row['evals_per_s'], '.3f')} | {format_number(row['s_per_eval_without_compile'])} | "
            f"{format_number(row['peak_rss_mb'], '.0f')} | {format_number(row.get('other_cores'))} | {agree} |")
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
                         f"{format_number(p['median_step_s'], '.4f')} ({format_number(p['min_step_s'], '.4f')}) | "
                         f"{format_number(p.get('median_forward_s'), '.4f')} | "
                         f"{format_number(p.get('gflop'), '.2f')} | {format_number(p.get('gflops'), '.1f')} | {format_number(p.get('pct_peak'), '.1f')} |")
        lines.append("\n(forward: the same batch through the network alone, BatchNorm in train mode, no "
                     "gradients; the rest of a step is the backward pass and the optimizer update.)")
    return "\n".join(lines)


def summarize(config: str, runs: dict) -> dict:
    """The result JSON of `run_sides`' raw results: rows per side, the step profile, where
    the time goes, the speedups and their notes, the machine, and the Markdown."""
    jax_results, torch_results = runs["jax"], runs["torch"]
    notes, skipped, total_s = list(runs["notes"]), runs["skipped"], runs["wall_s"]
    torch_result = torch_results[0]  # the headline: threads = cores unless told otherwise
    prefixed = next((t for t in torch_results if t.get("cache_prefix")), None)

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
        "date": dt.datetime.now().isoformat(timespec="seconds"), "config": config,
        "config_text": Path(config).read_text(),
        "machine": {"hostname": socket.gethostname(), "cpu": cpu, "gpu": gpu_name(),
                    "versions": versions(), "platform": platform.platform()},
        "speedup_vs_pytorch": round(speedup, 3),
        "speedup_vs_pytorch_evaluations_only": round(speedup_eval, 3),
        "speedup_vs_fastest_pytorch": round(speedup_fastest, 3),
        "speedup_vs_pytorch_prefix_cached": round(speedup_prefixed, 3) if speedup_prefixed else None,
        # every strategy's whole search against the same PyTorch run, and whether its search
        # evaluated the reference's masks (the ones PyTorch replays) in the same order
        "speedup_by_strategy": {r["strategy"]: round(torch_result["search_s"] / r["search_s"], 3)
                                for r in jax_results},
        "same_masks_as_reference": {r["strategy"]: r["masks"] == reference["masks"] for r in jax_results},
        "pytorch_threads": [t["threads"] for t in torch_results],
        "reference_strategy": reference["strategy"], "skipped_strategies": skipped,
        "rows": rows, "step_profile": step_profile, "where_time_goes": breakdown, "notes": notes,
        "benchmark_wall_s": round(total_s, 1),
        "raw": {"deft_jax": [r for r in jax_results if not r.get("reused_from")],
                "pytorch": torch_results},
    }
    summary["markdown"] = markdown(summary)
    return summary
