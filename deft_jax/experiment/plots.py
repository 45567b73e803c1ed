"""The experiment's plots: test accuracy per method, DEFT's search progress per seed,
and the layer groups DEFT chose per seed (written only when matplotlib imports)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deft_jax.run.figures import pareto_front  # shared with report.html

PLOTS = ("accuracy_by_method.png", "deft_fitness.png", "deft_groups.png", "pareto.png")


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
    if write_pareto(plt, by, meta, out / PLOTS[3]):
        written.append(PLOTS[3])
    return written


def write_pareto(plt, by: dict, meta: dict, path: Path) -> bool:
    """Seed 0's memo table of every search variant: each mask scored with the whole budget as
    (trainable fraction, 1 - fitness: validation accuracy, or minus the log-loss under
    `search.metric = "nll"`), its Pareto front, and the mask selected."""
    runs = [(m, r) for m, rs in by.items() for r in rs
            if r["seed"] == 0 and r.get("extra", {}).get("memo_fractions")]
    if not runs:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (method, r), colour in zip(runs, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")):
        extra = r["extra"]
        short = extra.get("memo_short_budget") or {}
        points = [(extra["memo_fractions"][k], 1 - f) for k, f in extra["memo"].items()
                  if k not in short and k in extra["memo_fractions"]]
        ax.scatter(*zip(*points), s=12, alpha=0.5, color=colour, label=f"{method} masks")
        front = pareto_front(points)
        ax.plot(*zip(*front), color=colour, lw=1)
        ax.scatter([r["trainable_fraction"]], [1 - extra["best_fitness"]], marker="*", s=120,
                   color=colour, edgecolor="black", zorder=4)
    ax.set_xlabel("trainable fraction of parameters")
    ax.set_ylabel("1 - fitness: val accuracy (minus log-loss with metric nll)", fontsize=8)
    ax.set_title(f"{meta['model']}, seed 0: masks, Pareto fronts, selected (star)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
