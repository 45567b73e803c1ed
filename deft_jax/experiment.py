"""Compare DEFT with baselines over repeated splits, with paired statistics.

    python -m deft_jax.experiment --config configs/osteosarcoma_resnet20.toml
        [--methods deft,linear-probe,...] [--seeds N] [--out DIR] [--resume DIR]
        [--set key=value ...]

For seed s = 0..N-1: one grouped stratified split with data.split_seed + s, training
seed `seed + s` (head init, batch order, DE), and every method on that same split.
Written under the output folder:

- runs.jsonl   one JSON object per (seed, method), appended as each finishes; runs.csv
- summary.md, summary.json   mean +- std over seeds, DEFT vs each method paired over seeds
- accuracy_by_method.png, deft_fitness.png, deft_groups.png
- config.json, experiment.json, splits/seed{s}.json, state/ (DEFT's resumable search)

`--resume DIR` skips every (seed, method) already in runs.jsonl (and resumes an
interrupted DEFT search at its last generation); it may add methods or seeds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deft_jax import cli, rundir
from deft_jax.config import Config, config_from_dict, load_config
from deft_jax.data import load_dataset
from deft_jax.errors import UserError, exit_on_user_error
from deft_jax.inputs import prepare_data
from deft_jax.masks import mask_key
from deft_jax.methods import METHODS, MethodContext, ProgramCache, get_method, run_order
from deft_jax.methods import handpicked as handpicked_method
from deft_jax.splits import save_splits

RUNS, RUNS_CSV, SUMMARY_MD, SUMMARY_JSON, META = (
    "runs.jsonl", "runs.csv", "summary.md", "summary.json", "experiment.json")
PROGRAMS_KEPT = 40  # compiled fine-tune programs kept alive across seeds (see ProgramCache)
PLOTS = ("accuracy_by_method.png", "deft_fitness.png", "deft_groups.png")
CSV_COLUMNS = ("seed", "method", "test_accuracy", "test_macro_f1", "test_auc", "val_accuracy",
               "val_macro_f1", "val_auc", "trainable_fraction", "wall_seconds",
               "fitness_evaluations", "mask", "train_seed", "split_seed", "split_sha")


# ---------------------------------------------------------------------------------------
# Running


def seed_config(cfg: Config, s: int) -> Config:
    """Seed s: its own split (split_seed + s) and its own training seed (seed + s)."""
    out = copy.deepcopy(cfg)
    out.seed = cfg.seed + s
    out.data.split_seed = cfg.data.split_seed + s
    return out


def split_sha(splits: dict[str, np.ndarray]) -> str:
    text = json.dumps({k: [int(i) for i in splits[k]] for k in sorted(splits)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_runs(path: Path) -> list[dict]:
    """Records of runs.jsonl; a torn last line (killed mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_run(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(rundir.json_text(record, indent=None) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_csv(path: Path, records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in sorted(records, key=lambda r: (r["seed"], r["method"])):
        writer.writerow({
            "seed": r["seed"], "method": r["method"],
            **{f"{split}_{k}": r[split].get(k) for split in ("test", "val") for k in ("accuracy", "macro_f1", "auc")},
            "trainable_fraction": r["trainable_fraction"], "wall_seconds": r["wall_seconds"],
            "fitness_evaluations": r["fitness_evaluations"], "mask": r.get("mask_key") or "",
            "train_seed": r["train_seed"], "split_seed": r["split_seed"], "split_sha": r["split_sha"]})
    rundir.write_text_atomic(path, buf.getvalue())


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        if not (out / META).is_file():
            raise UserError(f"{out} is not an experiment folder (no {META})")
        rundir.lock(out, "experiment folder")  # held until the experiment ends
        return
    rundir.create_fresh(out, "output folder")


def run_experiment(cfg: Config, out: Path, methods: list[str] | None = None, seeds: int | None = None,
                   resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Runs every missing (seed, method) and writes the summary; returns summary.json's dict."""
    import jax

    out = Path(out)
    if resume and methods is not None:  # a resumed experiment keeps its methods and may add some
        methods = list(cfg.experiment.methods) + [m for m in methods if m not in cfg.experiment.methods]
    methods = list(cfg.experiment.methods if methods is None else methods)
    seeds = cfg.experiment.seeds if seeds is None else seeds
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    if not methods:
        raise UserError("no methods to run")
    order = run_order(methods)
    cfg = copy.deepcopy(cfg)
    cfg.experiment.methods, cfg.experiment.seeds = methods, seeds

    # everything that can fail on user input fails before the output folder is created
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size, log=log)
    programs = ProgramCache()
    spec = programs.model(cfg, len(dataset.class_names))
    if "handpicked" in order:
        handpicked_method.check(cfg, spec)
    scratch_arch = cfg.experiment.scratch_model or cfg.model.name
    if "scratch" in order:
        programs.model(cfg, len(dataset.class_names), name=scratch_arch, weights="none")
    first = prepare_data(seed_config(cfg, 0), spec, dataset)

    _prepare_out(out, resume)
    rundir.write_json(out / rundir.CONFIG, cfg.to_dict())
    meta = {"methods": methods, "run_order": order, "seeds": seeds, "model": spec.name,
            "pretrained": spec.pretrained, "scratch_architecture": scratch_arch,
            "groups": list(spec.group_names), "class_names": dataset.class_names,
            "data": dataset.description, "backend": f"{jax.default_backend()} x{jax.device_count()}"}
    rundir.write_json(out / META, meta)
    (out / "splits").mkdir(exist_ok=True)
    (out / "state").mkdir(exist_ok=True)
    records = read_runs(out / RUNS)
    done = {(r["seed"], r["method"]) for r in records}
    log(f"experiment: {', '.join(order)} x {seeds} seed(s); {dataset.description}; model {spec.name} "
        f"({spec.pretrained or 'random init'}); output {out}")
    if done:
        log(f"resuming: {len(done)} (seed, method) run(s) already recorded are skipped")

    t_start = time.perf_counter()
    for s in range(seeds):
        todo = [m for m in order if (s, m) not in done]
        if not todo:
            continue
        cfg_s = seed_config(cfg, s)
        data = first if s == 0 else prepare_data(cfg_s, spec, dataset)
        save_splits(out / "splits" / f"seed{s}.json", data.splits, dataset.groups,
                    seed=cfg_s.data.split_seed, fractions=list(cfg_s.data.fractions),
                    origin=data.split_origin)
        sha = split_sha(data.splits)
        sizes = {k: int(len(v)) for k, v in data.splits.items()}
        variables = spec.init(cfg_s.seed)
        for m in order:
            if (s, m) in done:
                continue
            previous = {r["method"]: r for r in records if r["seed"] == s}
            ctx = MethodContext(cfg=cfg_s, data=data, spec=spec, variables=variables, seed=s,
                                previous=previous, programs=programs, state_dir=out / "state", log=log)
            log(f"seed {s + 1}/{seeds} method {m} ...")
            t0 = time.perf_counter()
            result = get_method(m).run(ctx)
            wall = time.perf_counter() - t0
            record = {"seed": s, "method": m, "train_seed": cfg_s.seed, "split_seed": cfg_s.data.split_seed,
                      "split_sha": sha, "split_sizes": sizes, "test": result.test, "val": result.val,
                      "trainable_fraction": result.trainable_fraction, "wall_seconds": round(wall, 2),
                      "fitness_evaluations": result.fitness_evaluations,
                      "mask_key": mask_key(result.mask) if result.mask else None,
                      "trained_groups": [g for g, on in result.mask.items() if on] if result.mask else None,
                      "history": result.history, "extra": result.extra,
                      "compiles_so_far": programs.compiles()}
            record = rundir.strict_json_value(record)
            append_run(out / RUNS, record)
            records.append(record)
            done.add((s, m))
            write_csv(out / RUNS_CSV, records)
            t = result.test
            log(f"seed {s + 1}/{seeds} method {m} ... test acc {t['accuracy']:.3f}, macro-F1 "
                f"{t['macro_f1']:.3f}, AUC {_fmt(t.get('auc'))} ({wall:.0f} s)")
        if programs.release_if_over(PROGRAMS_KEPT):
            log(f"released compiled programs after seed {s + 1} (more than {PROGRAMS_KEPT} alive)")
    log(f"runs finished in {time.perf_counter() - t_start:.0f} s; writing the summary")
    write_csv(out / RUNS_CSV, records)
    summary = summarize(records, meta, cfg, out)
    log(f"summary: {out / SUMMARY_MD}")
    return summary


# ---------------------------------------------------------------------------------------
# Statistics


def describe(values) -> dict:
    """n, mean and sample standard deviation (None when n < 2) of the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None}


def paired_comparison(a, b) -> dict:
    """a - b paired over seeds: mean, 95% t-interval, and a two-sided paired test -
    Wilcoxon signed-rank (scipy) when n >= 5, the paired t-test for 2 <= n < 5."""
    from scipy import stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = int(d.size)
    out = {"n": n, "mean_difference": float(d.mean()) if n else None, "ci95": None,
           "test": None, "p": None, "note": ""}
    if n < 2:
        out["note"] = "fewer than 2 paired seeds: no interval, no test"
        return out
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    out["ci95"] = [float(d.mean() - half), float(d.mean() + half)]
    if n >= 5:
        out["test"] = "wilcoxon"
        if np.all(d == 0):
            out["p"], out["note"] = 1.0, "all differences are 0"
        else:
            out["p"] = float(stats.wilcoxon(d).pvalue)
    else:
        out["test"] = "t-test"
        if sd == 0:
            out["note"] = "all differences are equal: t undefined"
            out["p"] = 1.0 if d[0] == 0 else None
        else:
            out["p"] = float(stats.ttest_rel(a, b).pvalue)
    return out


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None entries are skipped)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m, running = len(order), 0.0
    adjusted: list[float | None] = [None] * len(pvalues)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _mean_std(d: dict, digits: int = 3) -> str:
    if d["mean"] is None:
        return "n/a"
    return _fmt(d["mean"], digits) + ("" if d["std"] is None else f" ± {_fmt(d['std'], digits)}")


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
        lines.append(f"| {row['method']} | {row['seeds']} | {_mean_std(row['test_accuracy'])} | "
                     f"{_mean_std(row['test_macro_f1'])} | {_mean_std(row['test_auc'])} | "
                     f"{_mean_std(row['trainable_fraction'], 3)} | {_mean_std(row['wall_seconds'], 0)} | "
                     f"{_mean_std(row['fitness_evaluations'], 1)} |")
    lines += ["", "Per seed (test accuracy):", "",
              "| seed | " + " | ".join(summary["methods"]) + " |",
              "|---:|" + "---:|" * len(summary["methods"])]
    acc = summary["per_seed_test_accuracy"]
    for seed in seeds:
        lines.append(f"| {seed} | " + " | ".join(_fmt(acc[m].get(str(seed))) for m in summary["methods"]) + " |")
    if summary["paired_vs_deft"]:
        lines += ["", "## DEFT against each method (test accuracy, paired over seeds)", "",
                  "| DEFT − method | n | mean difference | 95% CI (t) | test | p | p (Holm) | note |",
                  "|---|---:|---:|---:|---|---:|---:|---|"]
        for r in summary["paired_vs_deft"]:
            ci = "n/a" if r["ci95"] is None else f"[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]"
            lines.append(f"| {r['method']} | {r['n']} | {_fmt(r['mean_difference'])} | {ci} | "
                         f"{r['test'] or 'none'} | {_fmt(r['p'])} | {_fmt(r.get('p_holm'))} | {r['note']} |")
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


# ---------------------------------------------------------------------------------------
# Plots


def write_plots(by: dict, meta: dict, groups: list[str], chosen: dict, out: Path) -> list[str]:
    """The three PNGs (~600x400 px); returns the names written (none without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    methods = [m for m in by if by[m]]
    if not methods:
        return written
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    data = [[r["test"]["accuracy"] for r in by[m]] for m in methods]
    ax.boxplot(data, widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, vals in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(vals)), vals, s=14, color="tab:blue", alpha=0.8, zorder=3)
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=25, ha="right", fontsize=9)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{meta['model']}: test accuracy per method ({max(len(d) for d in data)} seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / PLOTS[0])
    plt.close(fig)
    written.append(PLOTS[0])

    deft = by.get("deft", [])
    if deft:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for r in deft:
            h = r.get("history") or []
            ax.plot([x["generation"] for x in h], [x["best_fitness"] for x in h], marker="o", ms=3,
                    label=f"seed {r['seed']}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("generation")
        ax.set_ylabel("best fitness (1 - val metric)")
        ax.set_title(f"DEFT search progress ({meta['model']})", fontsize=10)
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / PLOTS[1])
        plt.close(fig)
        written.append(PLOTS[1])

        seeds = sorted(chosen)
        matrix = np.array([[g in chosen[s] for g in groups] for s in seeds], dtype=float)
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(groups)), groups, rotation=90, fontsize=7 if len(groups) > 12 else 9)
        ax.set_yticks(range(len(seeds)), [f"seed {s}" for s in seeds], fontsize=8)
        ax.set_xticks(np.arange(-0.5, len(groups)), minor=True)
        ax.set_yticks(np.arange(-0.5, len(seeds)), minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="minor", length=0)
        ax.set_title("layer groups DEFT fine-tunes (blue) per seed; head always trains", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / PLOTS[2])
        plt.close(fig)
        written.append(PLOTS[2])
    return written


# ---------------------------------------------------------------------------------------
# Command line


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m deft_jax.experiment",
        description="Compare DEFT with baselines (" + ", ".join(METHODS) + ") over repeated "
                    "grouped stratified splits, with paired statistics and plots.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config: [experiment] methods, seeds, handpicked (layer groups), folds (repeated), "
               "scratch_model; plus the usual [data] [model] [finetune] [search] [final].\n"
               "example: python -m deft_jax.experiment --config configs/digits_experiment.toml "
               "--out runs/digits-exp")
    p.add_argument("--config", help="TOML/JSON config file (default: the built-in digits demo)")
    p.add_argument("--methods", help="comma-separated methods (default: experiment.methods)")
    p.add_argument("--seeds", type=int, help="number of seeds/splits (default: experiment.seeds)")
    p.add_argument("--out", help="output folder to create (default: runs/experiment-<time>-<model>)")
    p.add_argument("--resume", metavar="DIR", help="continue an experiment folder; finished runs are skipped")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override config values (not with --resume)")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from deft_jax import compile_cache
    compile_cache.enable(log=print)
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            get_method(m)
        if not methods:
            raise UserError("--methods is empty")
    with rundir.owned():  # the output folder's lock is held until the experiment ends
        return _run(args, methods)


def _run(args, methods: list[str] | None) -> int:
    if args.resume:
        if args.config or args.overrides or args.out:
            raise UserError("--resume uses the experiment's own config.json; drop --config/--set/--out")
        out = Path(args.resume)
        if not (out / rundir.CONFIG).is_file() or not (out / META).is_file():
            raise UserError(f"{out} is not an experiment folder (no {rundir.CONFIG} / {META})")
        try:
            cfg = config_from_dict(rundir.read_json(out / rundir.CONFIG))
        except (json.JSONDecodeError, TypeError) as err:
            raise UserError(f"cannot read {out / rundir.CONFIG}: {err}") from None
        run_experiment(cfg, out, methods, args.seeds, resume=True)
    else:
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / (
            f"experiment-{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.name}")
        run_experiment(cfg, out, methods, args.seeds, resume=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
