"""The experiment's summary: summary.json (per-method table, DEFT paired against each
method, the layer groups DEFT chose) and summary.md, its readable form with the plots."""

from __future__ import annotations

import math
from pathlib import Path

from deft_jax import rundir
from deft_jax.config import Config
from deft_jax.experiment.plots import write_plots
from deft_jax.experiment.stats import describe, holm, paired_comparison

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"


def format_value(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def format_mean_std(d: dict, digits: int = 3) -> str:
    if d["mean"] is None:
        return "n/a"
    return format_value(d["mean"], digits) + ("" if d["std"] is None else f" ± {format_value(d['std'], digits)}")


def summarize(records: list[dict], meta: dict, cfg: Config, out: Path) -> dict:
    methods = [m for m in meta["run_order"] if any(r["method"] == m for r in records)]
    methods += sorted({r["method"] for r in records} - set(methods))
    by = {m: sorted((r for r in records if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
    table = []
    for m in methods:
        rs = by[m]
        table.append({"method": m, "seeds": len(rs),
                      **{f"test_{k}": describe([r["test"].get(k) for r in rs]) for k in ("accuracy", "macro_f1", "auc")},
                      "trainable_fraction": describe([r["trainable_fraction"] for r in rs]),
                      "wall_seconds": describe([r["wall_seconds"] for r in rs]),
                      "fitness_evaluations": describe([r["fitness_evaluations"] for r in rs])})
    paired = []
    if "deft" in by:
        deft_acc = {r["seed"]: r["test"]["accuracy"] for r in by["deft"]}
        for m in methods:
            if m == "deft":
                continue
            other = {r["seed"]: r["test"]["accuracy"] for r in by[m]}
            common = sorted(set(deft_acc) & set(other))
            row = paired_comparison([deft_acc[s] for s in common], [other[s] for s in common])
            paired.append({"method": m, "seeds": common, **row})
        for row, p in zip(paired, holm([r["p"] for r in paired])):
            row["p_holm"] = p
    groups = [g for g in meta["groups"] if g != "head"]
    chosen = {r["seed"]: set(r.get("trained_groups") or []) for r in by.get("deft", [])}
    group_counts = {g: sum(g in c for c in chosen.values()) for g in groups}
    seeds = sorted({r["seed"] for r in records})
    summary = rundir.strict_json_value({
        "model": meta["model"], "pretrained": meta["pretrained"], "data": meta["data"],
        "scratch_architecture": meta["scratch_architecture"], "backend": meta["backend"],
        "seeds": seeds, "methods": methods, "table": table, "paired_vs_deft": paired,
        "paired_metric": "test accuracy", "deft_group_counts": group_counts,
        "per_seed_test_accuracy": {m: {r["seed"]: r["test"]["accuracy"] for r in by[m]} for m in methods},
        "config": cfg.to_dict()})
    rundir.write_json(out / SUMMARY_JSON, summary)
    plots = write_plots(by, meta, groups, chosen, out)
    rundir.write_text_atomic(out / SUMMARY_MD, render_summary(summary, by, cfg, meta, plots))
    return summary


def render_summary(summary: dict, by: dict, cfg: Config, meta: dict, plots: list[str]) -> str:
    s, f = cfg.search, cfg.finetune
    seeds = summary["seeds"]
    any_rec = next(iter(by.values()))[0] if by else None
    sizes = any_rec["split_sizes"] if any_rec else {}
    lines = [f"# Method comparison: {meta['model']} on {meta['data']}", "",
             f"- Splits: {len(seeds)} repeated grouped, stratified train/val/test splits "
             f"(fractions {cfg.data.fractions}, split seeds {cfg.data.split_seed}..{cfg.data.split_seed + max(seeds, default=0)}); "
             f"every method sees the same split for a seed. Sizes (seed 0): "
             f"{sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')}.",
             f"- Backbone: {meta['model']}, weights {meta['pretrained'] or 'none (random init)'}, "
             f"input {cfg.model.input_size} px, granularity {cfg.model.granularity}; "
             f"`scratch` uses {meta['scratch_architecture']} with random init.",
             f"- Training recipe (all methods): {f.optimizer} lr {cfg.final.learning_rate or f.learning_rate}, "
             f"batch {f.batch_size}, {cfg.final.epochs} epochs; training seed = {cfg.seed} + seed.",
             f"- DEFT: DE population {s.population_size}, {s.generations} generations after the initial one, "
             f"F={s.differential_weight}, CR={s.crossover_rate}; fitness = 1 - val {s.metric} after a "
             f"{f.epochs}-epoch fine-tune. random-search trains as many distinct masks as DEFT did on "
             f"the same seed.",
             f"- Compute: {meta['backend']}. Wall times include compiles not already done by an earlier "
             f"seed or method in the same process (compiled programs are shared).", "",
             "## Results (test split, mean ± std over seeds)", "",
             "| method | seeds | accuracy | macro-F1 | AUC (OvR) | trainable fraction | wall time (s) | fitness evaluations |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary["table"]:
        lines.append(f"| {row['method']} | {row['seeds']} | {format_mean_std(row['test_accuracy'])} | "
                     f"{format_mean_std(row['test_macro_f1'])} | {format_mean_std(row['test_auc'])} | "
                     f"{format_mean_std(row['trainable_fraction'], 3)} | {format_mean_std(row['wall_seconds'], 0)} | "
                     f"{format_mean_std(row['fitness_evaluations'], 1)} |")
    lines += ["", "Per seed (test accuracy):", "",
              "| seed | " + " | ".join(summary["methods"]) + " |",
              "|---:|" + "---:|" * len(summary["methods"])]
    acc = summary["per_seed_test_accuracy"]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(format_value(acc[m].get(str(seed))) for m in summary["methods"]) + " |")
    if summary["paired_vs_deft"]:
        lines += ["", "## DEFT against each method (test accuracy, paired over seeds)", "",
                  "| DEFT − method | n | mean difference | 95% CI (t) | test | p | p (Holm) | note |",
                  "|---|---:|---:|---:|---|---:|---:|---|"]
        for r in summary["paired_vs_deft"]:
            ci = "n/a" if r["ci95"] is None else f"[{format_value(r['ci95'][0])}, {format_value(r['ci95'][1])}]"
            lines.append(f"| {r['method']} | {r['n']} | {format_value(r['mean_difference'])} | {ci} | "
                         f"{r['test'] or 'none'} | {format_value(r['p'])} | {format_value(r.get('p_holm'))} | {r['note']} |")
        n_test = sizes.get("test")
        lines += ["", "Positive differences favour DEFT. The test is Wilcoxon's signed-rank test (scipy, "
                  "two-sided) when at least 5 seeds are paired, else the paired t-test; Holm's correction "
                  "is over the comparisons in this table. With 5 seeds the smallest possible exact two-sided "
                  "Wilcoxon p is 0.0625, so it cannot reach 0.05: read the interval, not only the p-value."
                  + (f" One test sample is {1 / n_test:.3f} accuracy here." if n_test else "")]
    if summary["deft_group_counts"]:
        n = len(by.get("deft", []))
        lines += ["", f"## Layer groups DEFT chose ({n} seed(s))", "",
                  "| group | chosen in |", "|---|---:|"]
        lines += [f"| {g} | {c}/{n} |" for g, c in summary["deft_group_counts"].items()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Raw results: runs.jsonl (one line per seed and method), runs.csv.", ""]
    return "\n".join(lines)
