"""Statistics of the method comparison: per-method description over seeds, DEFT
against each method paired over seeds, and Holm's correction over those comparisons."""

from __future__ import annotations

import math

import numpy as np


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
