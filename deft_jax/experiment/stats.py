"""Paired statistics of the method comparison over repeated splits: corrected resampled t,
exact Wilcoxon on test-item counts, Holm.

The seeds of an experiment are repeated random train/val/test splits of one dataset, so
their test sets overlap and the per-seed differences between two methods are positively
correlated: the plain paired t-test then underestimates the variance and its intervals are
too narrow. We use:

- `corrected_resampled_t`: Nadeau & Bengio (2003), "Inference for the generalization error"
  (Machine Learning 52:239-281): the variance of the mean of J differences is
  (1/J + n_test/n_train) * s^2 instead of s^2 / J, with J - 1 degrees of freedom
  (Bouckaert & Frank 2004 call it the corrected repeated random subsampling t-test). The
  intervals and the verdicts of the summaries come from it.
- `wilcoxon_exact`: Wilcoxon's signed-rank test, exact: the statistic's distribution by
  enumerating all 2^n sign assignments of the observed (mid)ranks, so ties are handled;
  zero differences are dropped (Wilcoxon's convention). Differences are given as integers
  (test items: accuracy difference x test size), so ties are exact, not float accidents.
  It does not correct for the overlap: read it as a sign-robust check, not the verdict.
- `holm`: Holm's (1979) step-down adjustment over a family of comparisons.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

MAX_EXACT_PAIRS = 20  # 2^20 sign assignments: exact enumeration stays under a second


def corrected_resampled_t(differences: Sequence[float], n_train: float, n_test: float,
                          confidence: float = 0.95) -> dict:
    """Nadeau-Bengio corrected resampled t-test of mean(differences) = 0 over J repeated
    splits with n_train training and n_test test items each. n_test = 0 gives the plain
    paired t-test. Returns mean, the interval, t, df, the two-sided p and the factor the
    standard error was inflated by (sqrt(1 + J n_test / n_train))."""
    d = np.asarray(differences, dtype=np.float64)
    j = d.size
    if j < 2:
        raise ValueError("the corrected resampled t-test needs at least 2 paired splits")
    if n_train <= 0 or n_test < 0:
        raise ValueError("n_train must be > 0 and n_test >= 0")
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    se = math.sqrt((1.0 / j + n_test / n_train) * var)
    df = j - 1
    q = float(scipy_stats.t.ppf(0.5 + confidence / 2, df))
    if se == 0.0:
        t = math.copysign(math.inf, mean) if mean != 0 else 0.0
        p = 0.0 if mean != 0 else 1.0
    else:
        t = mean / se
        p = float(2 * scipy_stats.t.sf(abs(t), df))
    return {"mean": mean, "ci": [mean - q * se, mean + q * se], "t": t, "df": df, "p": p,
            "se": se, "correction": math.sqrt(1.0 + j * n_test / n_train), "n": j,
            "test": "corrected resampled t (Nadeau-Bengio)"}


def _midranks(values: np.ndarray) -> np.ndarray:
    return scipy_stats.rankdata(values, method="average")


def wilcoxon_exact(differences: Sequence[int], alternative: str = "two-sided") -> dict:
    """Exact Wilcoxon signed-rank test of integer paired differences. W+ = sum of the
    midranks of |d| over positive d (zeros dropped); the null distribution enumerates every
    sign assignment of the observed ranks. `alternative`: "two-sided", "greater" (d > 0)
    or "less". p is 1 when every difference is 0."""
    d = np.asarray(differences)
    if not np.issubdtype(d.dtype, np.integer):
        if not np.allclose(d, np.round(d)):
            raise ValueError("wilcoxon_exact takes integer differences (counts of test items)")
        d = np.round(d).astype(np.int64)
    nonzero = d[d != 0]
    n = nonzero.size
    if n == 0:
        return {"statistic": 0.0, "p": 1.0, "n": 0, "zeros": int(d.size), "test": "wilcoxon exact"}
    if n > MAX_EXACT_PAIRS:
        raise ValueError(f"exact enumeration is limited to {MAX_EXACT_PAIRS} non-zero differences")
    ranks = _midranks(np.abs(nonzero))
    w_plus = float(ranks[nonzero > 0].sum())
    # doubled ranks are integers (midranks are multiples of 1/2): exact comparisons
    doubled = np.round(2 * ranks).astype(np.int64)
    observed = int(round(2 * w_plus))
    total = int(doubled.sum())
    null = np.array([sum(r for r, s in zip(doubled, signs) if s)
                     for signs in itertools.product((0, 1), repeat=n)])
    if alternative == "greater":
        p = float(np.mean(null >= observed))
    elif alternative == "less":
        p = float(np.mean(null <= observed))
    elif alternative == "two-sided":
        centre = total  # 2 * E[W+] = total (in doubled units, E = total / 2 -> 2E = total)
        p = float(np.mean(np.abs(2 * null - centre) >= abs(2 * observed - centre)))
    else:
        raise ValueError(f"unknown alternative {alternative!r}")
    return {"statistic": w_plus, "p": min(p, 1.0), "n": n, "zeros": int(d.size - n),
            "test": "wilcoxon exact"}


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None entries are skipped and stay None)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def describe(values) -> dict:
    """n, mean and sample standard deviation (None when n < 2) of the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"n": int(v.size), "mean": float(v.mean()) if v.size else None,
            "std": float(v.std(ddof=1)) if v.size > 1 else None}


def paired_comparison(a: Sequence[float], b: Sequence[float], n_train: float, n_test: Sequence[int]) -> dict:
    """Method A - method B in test accuracy, paired over repeated splits: the corrected
    resampled t interval and p (the verdict), and the exact Wilcoxon p on the differences in
    correctly classified test items (accuracy x test size, per split)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    n = int(d.size)
    out = {"n": n, "mean_difference": float(d.mean()) if n else None, "ci95": None, "p": None,
           "p_wilcoxon": None, "item_differences": None, "verdict": "not resolved", "note": ""}
    if n < 2:
        out["note"] = "fewer than 2 paired splits: no interval, no test"
        return out
    n_test_mean = float(np.mean(n_test))
    t = corrected_resampled_t(d, n_train, n_test_mean)
    items = [int(round(x * m)) - int(round(y * m)) for x, y, m in zip(a, b, n_test)]
    w = wilcoxon_exact(items)
    out.update({"ci95": t["ci"], "p": t["p"], "t": t["t"], "df": t["df"], "se_inflation": t["correction"],
                "p_wilcoxon": w["p"], "item_differences": items, "verdict": verdict(t["ci"])})
    if all(x == 0 for x in items):
        out["note"] = "identical on every split"
    return out


def verdict(ci: Sequence[float]) -> str:
    """What a corrected interval of (A - B) supports."""
    low, high = ci
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not resolved"
