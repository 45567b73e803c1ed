"""One table across experiment folders that differ in one recipe setting (e.g. the learning-rate
schedule) on the same data, splits and seeds: per folder, each method's test accuracy and its
difference from the first folder's, with the fixed-split statistics when every record shares
one test split (paired t over seeds + paired item bootstrap), else the Nadeau-Bengio corrected
resampled t.

    python -m deft_jax.experiment.tables --across full,lp-ft --block schedule FOLDER... --into docs/results.md
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from deft_jax.experiment.records import RUNS, read_runs
from deft_jax.experiment.stats import describe, fixed_split_comparison, paired_comparison
from deft_jax.experiment.summary import SUMMARY_JSON, correct_items, fixed_test_split, format_mean_std, format_value


def label(summary: dict, folder: Path) -> str:
    """The folder's recipe in words: its schedule and warmup, and its validation metric where
    it is not accuracy (it picks the kept epoch), else the folder name."""
    config = summary.get("config", {})
    tune = config.get("finetune", {})
    if "schedule" not in tune:
        return folder.name
    warmup = tune.get("warmup_epochs", 0.0)
    metric = config.get("search", {}).get("metric", "accuracy")
    return (tune["schedule"] + (f", {warmup:g} warmup epoch(s)" if warmup else "")
            + (f", epochs kept by val {metric}" if metric != "accuracy" else ""))


def difference(mine: dict, base: dict, fixed: bool) -> dict:
    """mine - base in test accuracy over their common seeds."""
    common = sorted(set(mine) & set(base))
    a = [mine[s]["test"]["accuracy"] for s in common]
    b = [base[s]["test"]["accuracy"] for s in common]
    if fixed:
        ca, cb = [correct_items(mine[s]) for s in common], [correct_items(base[s]) for s in common]
        items = all(c is not None for c in ca + cb)
        return fixed_split_comparison(a, b, np.array(ca) if items else None, np.array(cb) if items else None)
    return paired_comparison(a, b, np.mean([mine[s]["split_sizes"]["train"] for s in common]),
                             [mine[s]["split_sizes"]["test"] for s in common])


def render_across(folders: list[Path], methods: list[str], page_dir: Path = Path(".")) -> list[str]:
    """Rows: folders (the first is the reference); columns per method: test accuracy and the
    difference from the reference with its interval(s) and verdict."""
    runs = [read_runs(f / RUNS) for f in folders]
    summaries = [json.loads((f / SUMMARY_JSON).read_text()) for f in folders]
    fixed = all(fixed_test_split(r) for r in runs) and len({r[0].get("test_sha") for r in runs if r}) == 1
    by = [{m: {r["seed"]: r for r in rs if r["method"] == m} for m in methods} for rs in runs]
    test = ("paired t over seeds on one fixed test split, and the item bootstrap" if fixed
            else "corrected resampled t")
    links = ", ".join(f"[{f.name}]({os.path.relpath(os.path.abspath(f / 'summary.md'), os.path.abspath(page_dir))})"
                      for f in folders)
    lines = [f"#### {summaries[0]['model']} on {summaries[0]['data']}", "",
             f"Against the first row ({test}); full results: {links}.", "",
             "| recipe | " + " | ".join(f"{m} test accuracy | {m} - first row" for m in methods) + " |",
             "|---|" + "---:|---:|" * len(methods)]
    for i, (folder, summary) in enumerate(zip(folders, summaries)):
        cells = []
        for m in methods:
            records = by[i][m]
            cells.append(format_mean_std(describe([r["test"]["accuracy"] for r in records.values()]))
                         if records else "-")
            if i == 0 or not records or not by[0][m]:
                cells.append("-")
                continue
            d = difference(records, by[0][m], fixed)
            ci = "n/a" if d["ci95"] is None else f"[{format_value(d['ci95'][0])}, {format_value(d['ci95'][1])}]"
            boot = (f", items [{format_value(d['ci95_bootstrap'][0])}, {format_value(d['ci95_bootstrap'][1])}]"
                    if d.get("ci95_bootstrap") else "")
            cells.append(f"{format_value(d['mean_difference'])} (t {ci}{boot}): {d['verdict']}")
        lines.append(f"| {label(summary, folder)} | " + " | ".join(cells) + " |")
    return lines + [""]
