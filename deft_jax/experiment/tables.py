"""Result tables for docs/results.md from committed experiment results (no hand-copied numbers).

    python -m deft_jax.experiment.tables results/payoff/* --into docs/results.md
    python -m deft_jax.experiment.tables --resummarize --block earlier results/osteosarcoma_* --into docs/results.md

For every result folder (an experiment's output: summary.json), one table of every method
(test accuracy, macro-F1, trainable fraction, search budget in fitness evaluations and
epochs, wall time and its multiple of full fine-tuning), the best DEFT variant's corrected
comparisons with full fine-tuning and random search, and the issue's goal checked per
dataset. With --into FILE the block between `<!-- BLOCK:begin -->` and `<!-- BLOCK:end -->`
(`--block`, default "payoff") is replaced; otherwise it is printed. `--resummarize FOLDER` rewrites a finished experiment's
summary.json / summary.md from its runs.jsonl with the current statistics (no training).
`--goals` writes one table instead: the goal checked per folder (`deft_jax.experiment.goals`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from deft_jax.config.schema import config_from_dict
from deft_jax.experiment.across import render_across
from deft_jax.experiment.goals import (GOAL_EPOCHS_X_FULL, GOAL_MARGIN, JUDGED_VARIANT, goal, render_goals,
                                      render_same_budget_goals)
from deft_jax.experiment.records import RUNS, read_runs
from deft_jax.methods.deft import COMPARED_VARIANTS
from deft_jax.experiment.summary import (
    SUMMARY_JSON,
    format_mean_std,
    format_value,
    summarize,
)

def recipe_note(summary: dict) -> str:
    """' Learning-rate schedule: ...' where the run's finetune.schedule or warmup is not the
    default (a constant rate without warmup), else ''."""
    tune = summary.get("config", {}).get("finetune", {})
    schedule, warmup = tune.get("schedule", "constant"), tune.get("warmup_epochs", 0.0)
    if schedule == "constant" and not warmup:
        return ""
    return f" Learning-rate schedule: {schedule}" + (f", {warmup:g} warmup epoch(s)." if warmup else ".")


def render(folder: Path, page_dir: Path = Path(".")) -> list[str]:
    """The block of one experiment folder; its link is relative to `page_dir`, the folder of
    the page it is written into."""
    summary = json.loads((folder / SUMMARY_JSON).read_text())
    link = os.path.relpath(os.path.abspath(Path(folder) / "summary.md"), os.path.abspath(page_dir))
    honesty = {r["method"]: r for r in summary.get("search_honesty", [])}
    lines = [f"#### {summary['model']} on {summary['data']}", "",
             f"{len(summary['seeds'])} seeds; full results: [{link}]({link}).{recipe_note(summary)}", "",
             "| method | test accuracy | macro-F1 | val accuracy | trainable fraction | fitness evals "
             "| fitness epochs | wall s | x full | x full epochs |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary["table"]:
        m = row["method"]
        epochs = honesty.get(m, {}).get("fitness_epochs")
        cost = summary["cost"].get(m, {})
        lines.append(f"| {m} | {format_mean_std(row['test_accuracy'])} | {format_mean_std(row['test_macro_f1'])} "
                     f"| {format_mean_std(honesty[m].get('final_val_accuracy', honesty[m]['final_val'])) if m in honesty else '-'} "
                     f"| {format_mean_std(row['trainable_fraction'], 2)} "
                     f"| {format_value(row['fitness_evaluations']['mean'], 1)} "
                     f"| {format_mean_std(epochs, 0) if epochs else '-'} "
                     f"| {format_value(cost.get('wall_seconds'), 0)} | {format_value(cost.get('x_full'), 1)} "
                     f"| {format_value(cost.get('x_full_epochs'), 1)} |")
    g = goal(summary)
    if g:
        variant = g["variant"]
        declared = summary.get("judged") or JUDGED_VARIANT
        why = ("the goal is judged on it: declared before the runs"
               if variant == declared else f"the goal is judged on it: {declared} did not run here")
        test = ("paired t over seeds on one fixed test split, and the item bootstrap"
                if summary.get("paired_test") == "fixed split" else "corrected resampled t")
        lines += ["", f"**{variant}** ({why}) against ({test}, Holm over its table):", ""]
        for r in summary["paired"].get(variant, []):
            if r["method"] in ("full", "lp-ft", "fastai", "random-search", "linear-probe", "full-ensemble", "deft",
                               "full-trainval", "full-trainval-ensemble", "full-valfolds-ensemble", "deft-trainval", *COMPARED_VARIANTS):
                ci = "n/a" if r["ci95"] is None else f"[{format_value(r['ci95'][0])}, {format_value(r['ci95'][1])}]"
                lines.append(f"- {r['method']}: {format_value(r['mean_difference'])} (95% CI {ci}, p {format_value(r['p'])}, "
                             f"Holm {format_value(r.get('p_holm'))}, Wilcoxon exact {format_value(r['p_wilcoxon'])}"
                             + (f"; item bootstrap 95% CI [{format_value(r['ci95_bootstrap'][0])}, "
                                f"{format_value(r['ci95_bootstrap'][1])}]" if r.get("ci95_bootstrap") else "")
                             + "): "
                             f"{r['verdict']}")
        mean = {r["method"]: r["test_accuracy"]["mean"] for r in summary["table"]}
        best = g["best_simple"]
        yes = {True: "yes", False: "no", None: "n/a"}
        checks = [f"at least the best simple recipe ({best}, {format_value(mean.get(best))}) - {GOAL_MARGIN:g}: "
                  + yes[g["within_best_simple"]],
                  f"at least random search in mean: {yes[g['at_least_random_search']]}",
                  f"resolved better than full: {yes[g['resolved_better_than_full']]}",
                  f"{format_value(g['x_full_epochs'], 1)}x full fine-tuning's epochs (goal <= "
                  f"{GOAL_EPOCHS_X_FULL:g}x): " + ("met" if g["within_epoch_budget"] else "not met")]
        lines += ["", "Goal check: " + "; ".join(checks) + "."]
    return lines + [""]


def resummarize(folder: Path) -> dict:
    """summary.json / summary.md of `folder` again from runs.jsonl (the run's metadata and
    config are read back from its previous summary.json)."""
    old = json.loads((folder / SUMMARY_JSON).read_text())
    cfg = config_from_dict(old["config"])
    groups = list(old["deft_group_counts"]) + ["head"]
    meta = {"run_order": old["methods"], "model": old["model"], "pretrained": old["pretrained"],
            "data": old["data"], "scratch_architecture": old["scratch_architecture"],
            "backend": old["backend"], "groups": groups}
    return summarize(read_runs(folder / RUNS), meta, cfg, folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--into", type=Path, default=None, metavar="FILE",
                        help="the Markdown page whose generated block is replaced (docs/results.md)")
    parser.add_argument("--block", default="payoff", help="the generated block's name")
    parser.add_argument("--across", default=None, metavar="METHODS",
                        help="one table across the folders (one recipe setting varied) for these comma-separated methods")
    parser.add_argument("--goals", action="store_true",
                        help="one table of the goal per folder (the judged method against the simple recipes)")
    parser.add_argument("--judged", default=None, metavar="METHOD",
                        help="with --goals: judge this method (declared later, run in the same folders) "
                             "instead of each summary's")
    parser.add_argument("--same-budget", default=None, metavar="METHOD",
                        help="one table of the goal declared with deft-trio per folder that ran "
                             "full-trainval-ensemble, for METHOD (against every same-budget recipe)")
    parser.add_argument("--resummarize", action="store_true",
                        help="rewrite each folder's summary from its runs.jsonl first")
    args = parser.parse_args(argv)
    if args.resummarize:
        for folder in args.folders:
            resummarize(folder)
    folders = [f for f in args.folders if (f / SUMMARY_JSON).exists()]
    begin, end = f"<!-- {args.block}:begin -->", f"<!-- {args.block}:end -->"
    page_dir = args.into.parent if args.into is not None else Path(".")
    if args.across:
        body = render_across(folders, args.across.split(","), page_dir)
    elif args.same_budget:
        body = render_same_budget_goals(folders, args.same_budget, page_dir)
    elif args.goals:
        body = render_goals(folders, page_dir, args.judged)
    else:
        body = [line for f in folders for line in render(f, page_dir)]
    block = [begin, ""] + body + [end]
    if args.into is None:
        print("\n".join(block))
        return 0
    text = args.into.read_text()
    if begin not in text or end not in text:
        print(f"error: {args.into} has no {begin} ... {end} block", file=sys.stderr)
        return 2
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    args.into.write_text(head + "\n".join(block) + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
