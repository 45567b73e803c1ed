"""The experiment's summary: summary.json (per-method table, each DEFT variant and each of
`PAIRED_RECIPES` paired against each baseline with corrected statistics, what each search
promised on validation against what its final model scored, the cost of each method relative
to full fine-tuning, the layer groups DEFT chose) and summary.md, its readable form with the plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deft_jax.config.schema import Config
from deft_jax.core.metrics import bits_correct, metric_from_report
from deft_jax.experiment.plots import write_plots
from deft_jax.experiment.stats import describe, fixed_split_comparison, holm, paired_comparison
from deft_jax.methods.deft import COMPARED_VARIANTS, VARIANTS
from deft_jax.runtime import rundir

# same-budget ensembles paired with every other method as each DEFT variant is (default, candidate)
PAIRED_RECIPES = ("full-trainval-ensemble", "full-valfolds-ensemble")

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
    fixed = fixed_test_split(records)
    paired = {v: comparisons(by, v, methods, fixed) for v in methods if v in VARIANTS or v in PAIRED_RECIPES}
    groups = [g for g in meta["groups"] if g != "head"]
    chosen = {r["seed"]: set(r.get("trained_groups") or []) for r in by.get("deft", [])}
    group_counts = {g: sum(g in c for c in chosen.values()) for g in groups}
    seeds = sorted({r["seed"] for r in records})
    summary = rundir.strict_json_value({
        "model": meta["model"], "pretrained": meta["pretrained"], "data": meta["data"],
        "scratch_architecture": meta["scratch_architecture"], "backend": meta["backend"],
        "seeds": seeds, "methods": methods, "judged": cfg.experiment.judged, "table": table, "paired": paired,
        "paired_metric": "test accuracy", "paired_test": "fixed split" if fixed else "repeated splits",
        "deft_group_counts": group_counts, "search_honesty": search_honesty(by, methods, cfg.search.metric),
        "cost": cost(by, methods, cfg.final.epochs), "learning_rates_chosen": learning_rates_chosen(by, methods),
        "per_seed_test_accuracy": {m: {r["seed"]: r["test"]["accuracy"] for r in by[m]} for m in methods},
        "config": cfg.to_dict()})
    rundir.write_json(out / SUMMARY_JSON, summary)
    plots = write_plots(by, meta, groups, chosen, out)
    rundir.write_text_atomic(out / SUMMARY_MD, render_summary(summary, by, cfg, meta, plots))
    return summary


def fixed_test_split(records: list[dict]) -> bool:
    """Whether every seed scored on the same test items (the dataset's own test split, only train
    and val resampled per seed): then the fixed-split statistics apply, else the splits overlap at
    random and the Nadeau-Bengio correction does. One seed counts as fixed when its test split is
    the dataset's own (`test_from_dataset`); records without `test_sha` count as repeated splits."""
    shas = {r.get("test_sha") for r in records}
    if not records or None in shas or len(shas) != 1:
        return False
    return len({r["seed"] for r in records}) > 1 or all(r.get("test_from_dataset") for r in records)


def correct_items(record: dict):
    """The per-item correctness of a record's test split (None when not recorded)."""
    bits = record["test"].get("correct_bits")
    return None if bits is None else bits_correct(bits, record["split_sizes"]["test"])


def comparisons(by: dict, variant: str, methods: list[str], fixed: bool = False) -> list[dict]:
    """`variant` - each baseline and each of `COMPARED_VARIANTS`, paired over common seeds; Holm
    over this list, for the t p-values and for the Wilcoxon ones. `fixed`: one test split in
    every seed (`fixed_split_comparison`), else repeated splits (`paired_comparison`)."""
    mine = {r["seed"]: r for r in by[variant]}
    rows = []
    for m in methods:
        if m == variant or (m in VARIANTS and m not in COMPARED_VARIANTS):
            continue
        other = {r["seed"]: r for r in by[m]}
        common = sorted(set(mine) & set(other))
        n_train = sum(mine[s]["split_sizes"]["train"] for s in common) / max(len(common), 1)
        if fixed:
            ca = [correct_items(mine[s]) for s in common]
            cb = [correct_items(other[s]) for s in common]
            items = all(c is not None for c in ca + cb)
            row = fixed_split_comparison([mine[s]["test"]["accuracy"] for s in common],
                                         [other[s]["test"]["accuracy"] for s in common],
                                         np.array(ca) if items else None, np.array(cb) if items else None)
            rows.append({"method": m, "seeds": common, **row})
            continue
        row = paired_comparison([mine[s]["test"]["accuracy"] for s in common],
                                [other[s]["test"]["accuracy"] for s in common], n_train,
                                [mine[s]["split_sizes"]["test"] for s in common])
        rows.append({"method": m, "seeds": common, **row})
    for row, p, pw in zip(rows, holm([r["p"] for r in rows]), holm([r["p_wilcoxon"] for r in rows])):
        row["p_holm"], row["p_wilcoxon_holm"] = p, pw
    return rows


def search_honesty(by: dict, methods: list[str], metric: str = "accuracy") -> list[dict]:
    """Per search method: the validation score its search promised (1 - best fitness: the
    search's `metric`), what the final model scored on validation (the same metric) and on
    test (accuracy): selection bias and fitness/final mismatch in numbers."""
    rows = []
    for m in methods:
        rs = [r for r in by[m] if r.get("extra", {}).get("best_fitness") is not None]
        if not rs:
            continue
        own = VARIANTS.get(m, {}).get("metric", metric)  # a variant may set its own
        rows.append({"method": m, "metric": own,
                     "promised_val": describe([1 - r["extra"]["best_fitness"] for r in rs]),
                     "final_val": describe([metric_from_report(own, r["val"]) if r["val"].get("n") and
                                            (own != "nll" or "log_loss" in r["val"]) else None for r in rs]),
                     "final_val_accuracy": describe([r["val"]["accuracy"] if r["val"].get("n") else None  # none:
                                                     for r in rs]),  # the final model trained on train+val
                     "test": describe([r["test"]["accuracy"] for r in rs]),
                     "fitness_epochs": describe([r["extra"].get("fitness_epochs") for r in rs])})
    return rows


def learning_rates_chosen(by: dict, methods: list[str]) -> dict:
    """With `experiment.learning_rates`: per method, how many seeds chose each rate of the
    grid on validation ({method: {rate: seeds}}, rates as written in the records)."""
    out = {}
    for m in methods:
        rates = [str(r["extra"]["learning_rate"]) for r in by[m] if "learning_rate" in r.get("extra", {})]
        if rates:
            out[m] = {rate: rates.count(rate) for rate in sorted(set(rates), key=float)}
    return out


def cost(by: dict, methods: list[str], final_epochs: int | None = None) -> dict:
    """Per method: mean wall seconds and their multiple of full fine-tuning's (when it ran);
    mean fine-tune epochs (training epochs over the training set: fitness fine-tunes and
    final trainings; a probe trains none) and `x_full_epochs`, the mean over seeds of their
    multiple of `full`'s on the same seed (None where a seed lacks either count). A `full`
    record written before records counted epochs trained `final_epochs` (its one training)."""
    wall = {m: describe([r["wall_seconds"] for r in by[m]])["mean"] for m in methods}
    full = wall.get("full")
    full_epochs = {r["seed"]: r.get("fine_tune_epochs", final_epochs) for r in by.get("full", [])}

    def ratios(m):
        return [r["fine_tune_epochs"] / full_epochs[r["seed"]] for r in by[m]
                if r.get("fine_tune_epochs") is not None and full_epochs.get(r["seed"])]

    return {m: {"wall_seconds": w, "x_full": (w / full) if (full and w is not None) else None,
                "fine_tune_epochs": describe([r.get("fine_tune_epochs") for r in by[m]])["mean"],
                "x_full_epochs": describe(ratios(m))["mean"]}
            for m, w in wall.items()}


def render_summary(summary: dict, by: dict, cfg: Config, meta: dict, plots: list[str]) -> str:
    s, f = cfg.search, cfg.finetune
    seeds = summary["seeds"]
    any_rec = next(iter(by.values()))[0] if by else None
    sizes = any_rec["split_sizes"] if any_rec else {}
    split_text = (f"one fixed test split (the same {sizes.get('test')} test items in every seed; train and "
                  f"val drawn per seed, split seeds {cfg.data.split_seed}..{cfg.data.split_seed + max(seeds, default=0)}): "
                  "the comparisons use the paired t over seeds and the paired item bootstrap"
                  if summary.get("paired_test") == "fixed split" else
                  f"{len(seeds)} repeated grouped, stratified train/val/test splits (fractions "
                  f"{cfg.data.fractions}, split seeds {cfg.data.split_seed}..{cfg.data.split_seed + max(seeds, default=0)}): "
                  "the comparisons use the Nadeau-Bengio corrected t")
    lines = [f"# Method comparison: {meta['model']} on {meta['data']}", "",
             f"- Splits: {split_text}; every method sees the same split for a seed. Sizes (seed 0): "
             f"{sizes.get('train')}/{sizes.get('val')}/{sizes.get('test')}.",
             f"- Backbone: {meta['model']}, weights {meta['pretrained'] or 'none (random init)'}, "
             f"input {cfg.model.input_size} px, granularity {cfg.model.granularity}; "
             f"`scratch` uses {meta['scratch_architecture']} with random init.",
             f"- Training recipe (all methods): {f.optimizer} lr {cfg.final.learning_rate or f.learning_rate}, "
             f"batch {f.batch_size}, {cfg.final.epochs} epochs, {f.schedule} rate"
             + (f" after {f.warmup_epochs:g} warmup epoch(s)" if f.warmup_epochs else "")
             + f"; training seed = {cfg.seed} + seed.",
             f"- DEFT: DE population {s.population_size}, {s.generations} generations after the initial one, "
             f"F={s.differential_weight}, CR={s.crossover_rate}; fitness = 1 - val {s.metric} after a "
             f"{f.epochs}-epoch fine-tune (`deft`; the `-mf` variants score with the final recipe, "
             f"{cfg.final.epochs} epochs, with successive halving). random-search trains as many "
             f"distinct masks as `deft` did on the same seed. Final models: {cfg.final.keep} epoch"
             + (f"; learning rate chosen on validation from {cfg.experiment.learning_rates}"
                if cfg.experiment.learning_rates else "") + ".",
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
    lines += render_cost_and_honesty(summary)
    if summary.get("learning_rates_chosen"):
        lines += ["", f"## Final learning rate chosen on validation (seeds per rate of {cfg.experiment.learning_rates})",
                  "", "| method | rate: seeds |", "|---|---|"]
        lines += [f"| {m} | " + ", ".join(f"{rate}: {n}" for rate, n in counts.items()) + " |"
                  for m, counts in summary["learning_rates_chosen"].items()]
    for variant, rows in summary["paired"].items():
        render = render_fixed_comparisons if summary["paired_test"] == "fixed split" else render_comparisons
        lines += render(variant, rows, sizes.get("test"))
    n = len(by.get("deft", []))
    if summary["deft_group_counts"] and n:
        lines += ["", f"## Layer groups DEFT chose ({n} seed(s))", "",
                  "| group | chosen in |", "|---|---:|"]
        lines += [f"| {g} | {c}/{n} |" for g, c in summary["deft_group_counts"].items()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "Raw results: runs.jsonl (one line per seed and method), runs.csv.", ""]
    return "\n".join(lines)


def render_cost_and_honesty(summary: dict) -> list[str]:
    lines = ["", "## Cost (mean wall seconds and fine-tune epochs per seed, and their multiples of full "
             "fine-tuning's)", "", f"Judged method: {summary.get('judged')}.", "",
             "| method | wall s | x full | fine-tune epochs | x full epochs |", "|---|---:|---:|---:|---:|"]
    for m, c in summary["cost"].items():
        lines.append(f"| {m} | {format_value(c['wall_seconds'], 0)} | {format_value(c['x_full'], 2)} "
                     f"| {format_value(c.get('fine_tune_epochs'), 0)} | {format_value(c.get('x_full_epochs'), 2)} |")
    if summary["search_honesty"]:
        lines += ["", "## What each search promised on validation, and what its final model scored", "",
                  "| method | val metric | promised val (1 - best fitness) | final model val | final model test "
                  "| fitness epochs |", "|---|---|---:|---:|---:|---:|"]
        for r in summary["search_honesty"]:
            metric = r.get("metric", "accuracy")
            shown = "-log-loss" if metric == "nll" else metric
            lines.append(f"| {r['method']} | {shown} | {format_mean_std(r['promised_val'])} "
                         f"| {format_mean_std(r['final_val'])} "
                         f"| {format_mean_std(r['test'])} | {format_mean_std(r['fitness_epochs'], 0)} |")
        lines += ["", "Promised far from the final model's val: the fitness does not predict what the final "
                  "training reaches (fitness/final mismatch). Final val above test: the winner was "
                  "selected on a small validation set (selection bias)."]
    return lines


def render_comparisons(variant: str, rows: list[dict], n_test: int | None) -> list[str]:
    lines = ["", f"## {variant} against each method (test accuracy, paired over splits)", "",
             f"| {variant} − method | n | mean difference | 95% CI (corrected) | p (corrected t) | p (Holm) "
             "| test items won − lost per split | p (Wilcoxon exact) | p (Holm) | verdict |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        ci = "n/a" if r["ci95"] is None else f"[{format_value(r['ci95'][0])}, {format_value(r['ci95'][1])}]"
        items = "n/a" if r["item_differences"] is None else " ".join(f"{x:+d}" for x in r["item_differences"])
        lines.append(f"| {r['method']} | {r['n']} | {format_value(r['mean_difference'])} | {ci} | "
                     f"{format_value(r['p'])} | {format_value(r.get('p_holm'))} | {items} | "
                     f"{format_value(r['p_wilcoxon'])} | {format_value(r.get('p_wilcoxon_holm'))} | {r['verdict']} |")
    lines += ["", f"Positive differences favour {variant}. The splits share test items, so the interval and "
              "its p come from the Nadeau-Bengio corrected resampled t-test (variance x (1/J + n_test/n_train) "
              "instead of 1/J, J - 1 degrees of freedom); the verdict is that interval's: better or worse "
              "only when it excludes 0. The Wilcoxon signed-rank p is exact, on the per-split differences "
              "in correctly classified test items (ties by midranks, zeros dropped); with 5 splits its "
              "smallest two-sided value is 0.0625. Holm's correction is over the rows of this table."
              + (f" One test item is {1 / n_test:.3f} accuracy here." if n_test else "")]
    return lines


def render_fixed_comparisons(variant: str, rows: list[dict], n_test: int | None) -> list[str]:
    lines = ["", f"## {variant} against each method (test accuracy, paired over seeds on one fixed test split)", "",
             f"| {variant} − method | n | mean difference | 95% CI (paired t, seeds) | p (t) | p (Holm) "
             "| 95% CI (item bootstrap) | p (bootstrap) | test items won − lost per seed | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]

    def interval(ci):
        return "n/a" if ci is None else f"[{format_value(ci[0])}, {format_value(ci[1])}]"

    for r in rows:
        items = "n/a" if r["item_differences"] is None else " ".join(f"{x:+d}" for x in r["item_differences"])
        lines.append(f"| {r['method']} | {r['n']} | {format_value(r['mean_difference'])} | {interval(r['ci95'])} | "
                     f"{format_value(r['p'])} | {format_value(r.get('p_holm'))} | {interval(r['ci95_bootstrap'])} | "
                     f"{format_value(r['p_bootstrap'])} | {items} | {r['verdict']} |")
    lines += ["", f"Positive differences favour {variant}. Every seed scores on the same test items, so "
              "the seeds are replicates of the training randomness, not overlapping random splits: the "
              "first interval is Student's paired t over the seeds (n_seeds − 1 degrees of freedom; how "
              "the difference varies with the training seed), the second a percentile bootstrap over "
              "the test items (2000 resamples, seed 0; the same resampled items for both methods and "
              "every seed; how it varies with the test sample). The verdict is better or worse only "
              "when both intervals exclude 0 on the same side. Holm's correction (on the t p-values) is "
              "over the rows of this table."
              + (f" One test item is {1 / n_test:.4f} accuracy here." if n_test else "")]
    return lines
