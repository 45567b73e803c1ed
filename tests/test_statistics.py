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
from deft_jax.experiment.stats import (corrected_resampled_t, holm, paired_comparison, verdict,
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
