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

When every seed scores on the *same* test items (the dataset's own test split, only train
resampled per seed: `data.train_per_class`), the seeds are replicates of the training
randomness on one fixed test set. Then (`fixed_split_comparison`):

- `paired_t`: Student's paired t over the seeds (mean difference, t interval with
  n_seeds - 1 df): how much the difference varies with the training seed;
- `paired_bootstrap`: the test items resampled with replacement (the same resampled items
  in every seed, both methods' correctness on them: paired per item), the statistic the
  mean over seeds of the accuracy difference; percentile interval, seeded (or exact, every
  resample enumerated, for a handful of items): how much it varies with the test sample.
  The verdict is better or worse only when both intervals exclude 0 on the same side.
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


def paired_t(differences: Sequence[float], confidence: float = 0.95) -> dict:
    """Student's paired t-test of mean(differences) = 0: the corrected test without the
    correction (n_test = 0)."""
    return {**corrected_resampled_t(differences, 1.0, 0.0, confidence), "test": "paired t"}


BOOTSTRAP_RESAMPLES = 2000
MAX_EXACT_ITEMS = 7  # 7^7 = 823,543 resamples


def _item_mean_differences(correct_a, correct_b) -> np.ndarray:
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError("correct_a and correct_b must be [seeds, items] with the same shape")
    return (a - b).mean(axis=0)  # per item: A - B averaged over the seeds


def paired_bootstrap(correct_a, correct_b, confidence: float = 0.95, resamples: int | None = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict:
    """Percentile bootstrap of mean over seeds of (accuracy A - accuracy B) on one fixed test
    set: `correct_a`, `correct_b` are [seeds, items] correctness (0/1), item i the same test
    item in every seed. Each resample draws n items with replacement (one draw for all
    seeds, both methods: paired). The interval's ends are the lowest resampled values whose
    empirical CDF reaches (1 - confidence) / 2 and (1 + confidence) / 2 (the inverted CDF).
    `resamples=None` enumerates all n^n resamples (at most MAX_EXACT_ITEMS items).
    p: twice the smaller share of resamples on either side of 0, at most 1."""
    d = _item_mean_differences(correct_a, correct_b)
    n = d.size
    if resamples is None:
        if n > MAX_EXACT_ITEMS:
            raise ValueError(f"exact enumeration is limited to {MAX_EXACT_ITEMS} items")
        idx = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(int(resamples), n))
    values = np.sort(d[idx].mean(axis=1))
    lo = float(np.quantile(values, (1 - confidence) / 2, method="inverted_cdf"))
    hi = float(np.quantile(values, (1 + confidence) / 2, method="inverted_cdf"))
    p = min(1.0, 2 * min(float(np.mean(values <= 0)), float(np.mean(values >= 0))))
    return {"mean": float(d.mean()), "ci": [lo, hi], "p": p, "resamples": int(values.size),
            "items": int(n), "seed": seed if resamples is not None else None,
            "test": "paired item bootstrap (percentile)"}


def fixed_split_comparison(a: Sequence[float], b: Sequence[float], correct_a=None, correct_b=None,
                           seed: int = 0) -> dict:
    """Method A - method B in test accuracy over seeds that share one fixed test split: the
    paired t over seeds and, with per-item correctness ([seeds, items]), the paired item
    bootstrap; the verdict needs both intervals to agree (only the t without correctness)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    n = int(d.size)
    out = {"n": n, "mean_difference": float(d.mean()) if n else None, "ci95": None, "p": None,
           "ci95_bootstrap": None, "p_bootstrap": None, "p_wilcoxon": None, "item_differences": None,
           "verdict": "not resolved", "note": "", "test": "fixed split"}
    have_items = correct_a is not None and correct_b is not None and n > 0
    if have_items:
        boot = paired_bootstrap(correct_a, correct_b, seed=seed)
        ca, cb = np.asarray(correct_a), np.asarray(correct_b)
        out.update({"ci95_bootstrap": boot["ci"], "p_bootstrap": boot["p"],
                    "item_differences": [int(x) for x in ca.sum(axis=1) - cb.sum(axis=1)]})
    if n < 2:
        out["note"] = "fewer than 2 seeds: no t interval"
        if have_items:
            out["verdict"] = verdict(out["ci95_bootstrap"])
        return out
    t = paired_t(d)
    out.update({"ci95": t["ci"], "p": t["p"], "t": t["t"], "df": t["df"]})
    if have_items:
        out["p_wilcoxon"] = wilcoxon_exact(out["item_differences"])["p"]
        v1, v2 = verdict(t["ci"]), verdict(out["ci95_bootstrap"])
        out["verdict"] = v1 if v1 == v2 else "not resolved"
    else:
        out["verdict"] = verdict(t["ci"])
        out["note"] = "no per-item correctness recorded: t interval only"
    return out


def verdict(ci: Sequence[float]) -> str:
    """What a corrected interval of (A - B) supports."""
    low, high = ci
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    return "not resolved"
