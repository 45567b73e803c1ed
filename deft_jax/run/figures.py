"""The figures of a run's report.html as PNG bytes: the fitness per generation, the Pareto
front of the evaluated masks, and small thumbnails of test images. Each figure's labels come
from one function (`fitness_labels`, `pareto_labels`), which the page also uses as the
image's alt text, so what a figure plots is named the same in both.

matplotlib is optional (the "plots" extra): `figure_factory()` returns None without it and
the page says so. Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot, so the
caller's backend and global state are left alone). Thumbnails need only Pillow."""

from __future__ import annotations

import io
import math

import numpy as np

from deft_jax.core.metrics import fitness_formula, lower_is_better, quantity_name

BLUE, ORANGE, GREY = "#2b6cb0", "#dd6b20", "#718096"


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool = False) -> list[tuple[float, float]]:
    """The (trainable fraction, validation score) points no other point beats on both (fewer
    parameters and at least the score: higher, or with `lower_is_better` lower, as a
    log-loss), by increasing fraction."""
    sign = -1.0 if lower_is_better else 1.0
    front, best = [], -np.inf
    for fraction, score in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * score > best:
            front.append((fraction, score))
            best = sign * score
    return front


def fitness_labels(metric: str) -> tuple[str, str, str]:
    """(x label, y label, title) of the fitness-per-generation figure."""
    return ("generation (0: initial population)", fitness_formula(metric),
            "fitness per generation (lower is better)")


def pareto_labels(metric: str) -> tuple[str, str, str]:
    """(x label, y label, title) of the Pareto figure: the val quantity in its own sign."""
    better = "down and left" if lower_is_better(metric) else "up and left"
    return ("trainable fraction of the parameters", f"val {quantity_name(metric)}",
            f"val {quantity_name(metric)} against trainable parameters ({better} is better)")


def figure_factory():
    """`matplotlib.figure.Figure`, or None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def generation_of_entries(history: list[dict], n_entries: int) -> list[int] | None:
    """The generation in which each memo entry (in insertion order) was first evaluated, from
    the history's running count of distinct masks; None when the history lacks it."""
    out, start = [], 0
    for row in history:
        end = row.get("distinct_masks_so_far")
        if end is None:
            return None
        out += [row["generation"]] * max(0, min(end, n_entries) - start)
        start = max(start, end)
    return out if len(out) == n_entries else None


def fitness_png(Figure, history: list[dict], memo: dict[str, float], short: dict[str, int],
                metric: str) -> bytes:
    """Fitness per generation: best so far, the generation's best and mean, and every mask
    at the generation it was first evaluated (hollow: scored with the short budget only)."""
    fig = Figure(figsize=(7, 3.8), dpi=100)
    ax = fig.subplots()
    gens = [h["generation"] for h in history]
    of = generation_of_entries(history, len(memo))
    if of is not None:
        rng = np.random.default_rng(0)  # jitter only: the figure, not the search
        keys = list(memo)
        for hollow in (False, True):
            idx = [i for i, k in enumerate(keys) if (k in short) == hollow]
            if not idx:
                continue
            x = np.array([of[i] for i in idx], float) + rng.uniform(-0.15, 0.15, len(idx))
            y = [memo[keys[i]] for i in idx]
            label = "a mask's fitness (short budget)" if hollow else "each mask evaluated"
            ax.scatter(x, y, s=14, alpha=0.45, label=label, zorder=2,
                       facecolors="none" if hollow else GREY, edgecolors=GREY)
    ax.plot(gens, [h["mean_fitness"] for h in history], ":", color=ORANGE, label="population mean")
    ax.plot(gens, [h.get("generation_best_fitness", np.nan) for h in history], "--", marker=".",
            color=ORANGE, label="generation best")
    ax.plot(gens, [h["best_fitness"] for h in history], "-", marker="o", ms=4, color=BLUE,
            lw=2, label="best so far", zorder=3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _finished(fig, ax, *fitness_labels(metric), "upper right")


def pareto_png(Figure, points: list[tuple[float, float]], selected: tuple[float, float],
               metric: str) -> bytes:
    """Every mask scored with the whole budget as (trainable fraction, val quantity in its own
    sign, `core.metrics.quantity_of`), the Pareto front, and the selected mask (star)."""
    fig = Figure(figsize=(7, 3.8), dpi=100)
    ax = fig.subplots()
    ax.scatter(*zip(*points), s=16, alpha=0.5, color=GREY, label="evaluated masks")
    front = pareto_front(points, lower_is_better(metric))
    ax.step(*zip(*front), where="post", color=BLUE, lw=1.5, label="Pareto front")
    ax.scatter(*zip(*front), s=22, color=BLUE, zorder=3)
    ax.scatter([selected[0]], [selected[1]], marker="*", s=220, color=ORANGE, edgecolor="black",
               zorder=4, label="selected mask")
    xs = [p[0] for p in points] + [selected[0]]
    if min(xs) > 0 and max(xs) / min(xs) > 30:
        ax.set_xscale("log")
    return _finished(fig, ax, *pareto_labels(metric), "upper right" if lower_is_better(metric) else "lower right")


def _finished(fig, ax, xlabel: str, ylabel: str, title: str, legend_at: str) -> bytes:
    """Labels, grid and legend as every figure of the report has them; the PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_at)
    fig.tight_layout()
    return _png(fig)


def thumbnail_png(image: np.ndarray, side: int = 96) -> bytes:
    """A uint8 HxWx3 (or HxW) image as a PNG whose longer side is `side` px (small images
    enlarged without smoothing, so their pixels stay visible)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(np.asarray(image, np.uint8).squeeze()))
    h, w = img.height, img.width
    scale = side / max(h, w, 1)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if scale >= 1:
        factor = max(1, math.floor(scale))
        img = img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    else:
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
