"""The experiment's statistics against published values: Student's sleep data for the
paired t-test (the corrected test without the correction), Hollander & Wolfe's depression
data for the exact Wilcoxon signed-rank test, a worked Holm example, and the
Nadeau-Bengio correction's variance factor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from deft_jax.experiment.plots import pareto_front
from deft_jax.experiment.stats import (corrected_resampled_t, fixed_split_comparison, holm,
                                       paired_bootstrap, paired_comparison, paired_t, verdict,
                                       wilcoxon_exact)

# Student (1908) sleep data; R: t.test(extra ~ group, data = sleep, paired = TRUE) prints
# t = -4.0621, df = 9, p-value = 0.002833, 95 percent CI -2.4598858 -0.7001142, mean -1.58
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
# Hollander & Wolfe (1973), p. 29 (Hamilton depression scale, first and second visit); R's
# wilcox.test(x, y, paired = TRUE, alternative = "greater") prints V = 40, p-value = 0.01953
HW_X = [1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30]
HW_Y = [0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29]


def test_without_the_correction_the_test_is_students_paired_t_test_on_the_sleep_data():
    r = corrected_resampled_t(np.subtract(SLEEP_1, SLEEP_2), n_train=1, n_test=0)
    assert r["mean"] == pytest.approx(-1.58)
    assert r["t"] == pytest.approx(-4.0621, abs=1e-4)
    assert r["df"] == 9
    assert r["p"] == pytest.approx(0.002833, abs=1e-6)
    assert r["ci"] == pytest.approx([-2.4598858, -0.7001142], abs=1e-7)


def test_the_nadeau_bengio_correction_inflates_the_variance_by_one_plus_j_times_test_over_train():
    d = [0.04, -0.02, 0.06, 0.02, 0.0]
    plain = corrected_resampled_t(d, n_train=144, n_test=0)
    corrected = corrected_resampled_t(d, n_train=144, n_test=48)
    factor = math.sqrt(1 + 5 * 48 / 144)  # (1/J + n2/n1) / (1/J) = 1 + J n2 / n1
    assert corrected["correction"] == pytest.approx(factor)
    assert corrected["t"] == pytest.approx(plain["t"] / factor)
    half_plain = plain["ci"][1] - plain["mean"]
    assert corrected["ci"][1] - corrected["mean"] == pytest.approx(factor * half_plain)
    assert corrected["p"] > plain["p"]


def test_the_exact_wilcoxon_test_reproduces_hollander_and_wolfe():
    items = np.round((np.subtract(HW_X, HW_Y)) * 1000).astype(int)  # integers, as test counts are
    one_sided = wilcoxon_exact(items, alternative="greater")
    assert one_sided["statistic"] == 40
    assert one_sided["p"] == pytest.approx(0.01953, abs=1e-5)
    assert wilcoxon_exact(items)["p"] == pytest.approx(2 * 0.01953125)


def test_tied_and_zero_differences_get_the_exact_permutation_distribution_of_their_midranks():
    d = np.array([2, -1, 2, 3, 0, 1, -1, 2, -2])
    ours = wilcoxon_exact(d)
    assert ours["zeros"] == 1 and ours["n"] == 8
    nonzero = d[d != 0]

    def w_plus(x, axis):  # an independent exact computation: scipy's sign-flip enumeration
        return np.sum(np.where(x > 0, scipy_stats.rankdata(np.abs(x), axis=axis), 0), axis=axis)

    theirs = scipy_stats.permutation_test((nonzero,), w_plus, permutation_type="samples",
                                          n_resamples=np.inf, alternative="two-sided")
    assert ours["p"] == pytest.approx(theirs.pvalue)
    assert wilcoxon_exact([0, 0, 0])["p"] == 1.0


def test_five_splits_cannot_reach_five_percent_with_wilcoxon():
    assert wilcoxon_exact([1, 2, 3, 4, 5])["p"] == pytest.approx(0.0625)


def test_holms_adjustment_of_a_worked_example():
    # sorted p: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([None, 0.5]) == [None, 0.5]


def test_a_paired_comparison_counts_test_items_and_reads_its_verdict_from_the_corrected_interval():
    a = [0.875, 0.812, 0.812, 0.667, 0.854]
    b = [0.708, 0.708, 0.729, 0.667, 0.792]
    r = paired_comparison(a, b, n_train=144, n_test=[48] * 5)
    assert r["item_differences"] == [8, 5, 4, 0, 3]
    plain = corrected_resampled_t(np.subtract(a, b), 144, 0)
    assert plain["ci"][0] > 0  # the plain paired interval excludes 0 ...
    assert r["ci95"][0] < 0 < r["ci95"][1] and r["verdict"] == "not resolved"  # ... the corrected does not
    assert verdict([0.01, 0.2]) == "better" and verdict([-0.2, -0.01]) == "worse"
    assert paired_comparison([0.5], [0.4], 10, [5])["ci95"] is None


def test_the_pareto_front_keeps_only_masks_no_smaller_mask_matches():
    points = [(0.1, 0.70), (0.2, 0.80), (0.3, 0.75), (0.5, 0.80), (0.9, 0.85), (0.05, 0.60)]
    assert pareto_front(points) == [(0.05, 0.60), (0.1, 0.70), (0.2, 0.80), (0.9, 0.85)]


# --- a fixed test split: paired t over seeds, paired bootstrap over test items ---------------


def test_the_fixed_split_paired_t_is_students_paired_t_on_the_sleep_data():
    r = paired_t(np.subtract(SLEEP_1, SLEEP_2))
    assert r["t"] == pytest.approx(-4.0621, abs=1e-4) and r["df"] == 9
    assert r["ci"] == pytest.approx([-2.4598858, -0.7001142], abs=1e-7)
    assert r["p"] == pytest.approx(0.002833, abs=1e-6)


def test_the_exact_item_bootstrap_of_one_seed_gives_the_hand_enumerated_percentile_interval():
    # A right on item 0 only, B on none: d = (1, 0, 0). Of the 27 resamples of 3 items, the
    # mean is k/3 with k ~ Binomial(3, 1/3): P = 8, 12, 6, 1 (/27), CDF 8, 20, 26, 27 (/27).
    # 95%: lowest value with CDF >= 0.025 is 0, with CDF >= 0.975 is 1 (26/27 = 0.963 < 0.975)
    # 80%: CDF >= 0.10 at 0, CDF >= 0.90 at 2/3 (26/27). p = 2 * min(8/27, 27/27) = 16/27.
    a, b = [[1, 0, 0]], [[0, 0, 0]]
    r = paired_bootstrap(a, b, resamples=None)
    assert r["resamples"] == 27 and r["mean"] == pytest.approx(1 / 3)
    assert r["ci"] == pytest.approx([0.0, 1.0])
    assert paired_bootstrap(a, b, confidence=0.8, resamples=None)["ci"] == pytest.approx([0.0, 2 / 3])
    assert r["p"] == pytest.approx(16 / 27)


def test_the_item_bootstrap_resamples_the_same_items_in_every_seed_hand_enumerated_for_two_seeds():
    # seed 0: d = (1, 0, 0); seed 1: d = (1, 1, 0); the same resampled items in both seeds, so
    # the statistic is the resampled mean of the per-item means (1, 1/2, 0) = S / 6 with S the
    # sum of three draws from {2, 1, 0}: counts 1, 3, 6, 7, 6, 3, 1 for S = 0..6 (/27), CDF 1,
    # 4, 10, 17, 23, 26, 27. 80%: CDF >= 0.10 first at S = 1, CDF >= 0.90 first at S = 5.
    a = [[1, 0, 0], [1, 1, 0]]
    b = [[0, 0, 0], [0, 0, 0]]
    exact = paired_bootstrap(a, b, confidence=0.8, resamples=None)
    assert exact["mean"] == pytest.approx(0.5) and exact["ci"] == pytest.approx([1 / 6, 5 / 6])
    assert paired_bootstrap(a, b, resamples=None)["ci"] == pytest.approx([0.0, 1.0])
    drawn = paired_bootstrap(a, b, confidence=0.8, resamples=20_000, seed=7)
    assert drawn["ci"] == pytest.approx([1 / 6, 5 / 6])  # far from the CDF's steps: the draw agrees
    assert drawn == paired_bootstrap(a, b, confidence=0.8, resamples=20_000, seed=7)  # seeded
    # swapping the methods mirrors the interval
    assert paired_bootstrap(b, a, confidence=0.8, resamples=None)["ci"] == pytest.approx([-5 / 6, -1 / 6])


def test_a_fixed_split_verdict_needs_the_seed_t_and_the_item_bootstrap_to_agree():
    rng = np.random.default_rng(0)
    items = 400
    base = rng.random((5, items)) < 0.6
    better = base | (rng.random((5, items)) < 0.25)  # A right wherever B is, and on more
    a, b = better.mean(axis=1), base.mean(axis=1)
    r = fixed_split_comparison(a, b, better, base)
    assert r["ci95"][0] > 0 and r["ci95_bootstrap"][0] > 0 and r["verdict"] == "better"
    assert r["item_differences"] == [int(x) for x in better.sum(1) - base.sum(1)]
    # every seed gains exactly one of 4 test items (a zero-width t interval above 0), but a
    # resample misses that item with probability (3/4)^4 = 0.32: the bootstrap reaches 0
    tiny_a = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    tiny_b = np.array([[1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 1]])
    r = fixed_split_comparison(tiny_a.mean(1), tiny_b.mean(1), tiny_a, tiny_b)
    assert r["ci95"] == pytest.approx([0.25, 0.25]) and verdict(r["ci95"]) == "better"
    assert r["ci95_bootstrap"][0] == 0.0 and r["verdict"] == "not resolved"
    # without per-item correctness the t interval alone decides, and says so
    r = fixed_split_comparison(a, b)
    assert r["ci95_bootstrap"] is None and r["verdict"] == "better" and "t interval only" in r["note"]


def _records(test_shas, correct):
    """deft and full over len(test_shas) seeds; `correct[method][seed]` is a 0/1 list."""
    from deft_jax.core.metrics import correctness_bits
    out = []
    for s, sha in enumerate(test_shas):
        for m in ("full", "deft"):
            c = np.asarray(correct[m][s])
            logits = np.stack([1 - c, c], axis=1).astype(float)  # argmax = 1 where right
            out.append({"seed": s, "method": m, "test_sha": sha, "split_sizes": {"train": 20, "test": c.size},
                        "test": {"accuracy": float(c.mean()),
                                 "correct_bits": correctness_bits(logits, np.ones(c.size, int))}})
    return out


def test_the_summary_pairs_seeds_on_a_fixed_test_split_with_the_t_and_the_item_bootstrap():
    from deft_jax.experiment.summary import comparisons, fixed_test_split, render_fixed_comparisons
    rng = np.random.default_rng(1)
    full = rng.random((4, 300)) < 0.5
    deft = full | (rng.random((4, 300)) < 0.3)
    records = _records(["same"] * 4, {"full": full, "deft": deft})
    by = {m: [r for r in records if r["method"] == m] for m in ("full", "deft")}
    assert fixed_test_split(records)
    (row,) = comparisons(by, "deft", ["full", "deft"], fixed=True)
    expected = fixed_split_comparison(deft.mean(1), full.mean(1), deft, full)
    assert row["ci95"] == pytest.approx(expected["ci95"]) and row["ci95_bootstrap"] == expected["ci95_bootstrap"]
    assert row["verdict"] == "better" and row["test"] == "fixed split"
    assert "item bootstrap" in "\n".join(render_fixed_comparisons("deft", [row], 300))


def test_the_summary_keeps_the_nadeau_bengio_test_when_the_test_items_differ_between_seeds():
    from deft_jax.experiment.summary import comparisons, fixed_test_split
    same = [[1, 0, 1, 1]] * 3
    records = _records(["a", "b", "c"], {"full": [[1, 0, 0, 1]] * 3, "deft": same})
    assert not fixed_test_split(records)
    assert not fixed_test_split([{k: v for k, v in r.items() if k != "test_sha"} for r in records])
    one_seed = [r for r in records if r["seed"] == 0]
    assert not fixed_test_split(one_seed)  # one seed: fixed only when its test split is the dataset's own
    assert fixed_test_split([{**r, "test_from_dataset": True} for r in one_seed])
    by = {m: [r for r in records if r["method"] == m] for m in ("full", "deft")}
    (row,) = comparisons(by, "deft", ["full", "deft"], fixed=False)
    assert "se_inflation" in row and "ci95_bootstrap" not in row
