"""The statistics behind `engine compare` and `engine report --by variant`, checked against
published values and against what synthetic data was built to contain."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy.stats import binomtest

from engine.observe.report import nearest_rank
from engine.quality.stats import (
    Difference,
    Measure,
    Statistic,
    bootstrap_diff,
    format_amount,
    newcombe_diff,
    statistic,
    wilson,
)


# -- proportions ------------------------------------------------------------------------------
@pytest.mark.parametrize(("a", "b", "expected"), [
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10 (hybrid score).
    ((48, 80), (56, 70), (0.0524, 0.3339)),
    ((3, 10), (9, 10), (0.1705, 0.8090)),
    ((0, 29), (5, 56), (-0.0381, 0.1926)),
    ((0, 20), (0, 10), (-0.1611, 0.2775)),
    ((0, 20), (10, 10), (0.6791, 1.0000)),
])
def test_newcombe_interval_matches_the_published_examples(
        a: tuple[int, int], b: tuple[int, int], expected: tuple[float, float]) -> None:
    diff = newcombe_diff(a[0], a[1], b[0], b[1])
    assert diff is not None
    assert diff.estimate == pytest.approx(b[0] / b[1] - a[0] / a[1])
    assert (round(diff.low, 4), round(diff.high, 4)) == expected
    assert diff.method == "newcombe"


def test_significance_is_the_interval_excluding_zero() -> None:
    significant = newcombe_diff(48, 80, 56, 70)
    not_significant = newcombe_diff(0, 29, 5, 56)  # 9 % vs 0 %, but only 85 records
    assert significant is not None and significant.significant
    assert not_significant is not None and not not_significant.significant
    assert newcombe_diff(0, 0, 5, 10) is None


@pytest.mark.parametrize(("hits", "n"), [(81, 263), (0, 40), (40, 40), (1, 3), (517, 1000)])
def test_wilson_interval_agrees_with_scipy(hits: int, n: int) -> None:
    expected = binomtest(hits, n).proportion_ci(method="wilson")
    assert wilson(hits, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_on_the_textbook_example() -> None:
    low, high = wilson(81, 263)  # Newcombe (1998b), the single-proportion paper: 0.2553-0.3662
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)


# -- bootstrap ------------------------------------------------------------------------------
def test_statistic_is_the_reports_nearest_rank_percentile() -> None:
    rng = random.Random(3)
    values = [rng.expovariate(5) for _ in range(101)]
    percentiles: tuple[tuple[Statistic, int], ...] = (("p50", 50), ("p95", 95), ("p99", 99))
    for which, q in percentiles:
        assert statistic(values, which) == nearest_rank(sorted(values), q)
    assert statistic(values, "mean") == pytest.approx(sum(values) / len(values))
    assert statistic([], "p95") == 0.0


def test_bootstrap_mean_interval_covers_the_true_difference() -> None:
    """40 synthetic experiments with a true difference of 0.3: a 95 % interval must cover it
    in about 38 of them (fewer than 34 happens with probability ~1 %), and exclude 0 in most."""
    rng = np.random.default_rng(7)
    covered = excluded_zero = 0
    for seed in range(40):
        a = rng.normal(1.0, 1.0, 300)
        b = rng.normal(1.3, 1.0, 300)
        diff = bootstrap_diff(list(a), list(b), "mean", seed=seed)
        assert diff is not None and diff.method == "bootstrap"
        assert diff.low < diff.estimate < diff.high
        covered += diff.low <= 0.3 <= diff.high
        excluded_zero += diff.significant
    assert covered >= 34
    assert excluded_zero >= 36


def test_bootstrap_p95_separates_a_slower_version_and_not_an_equal_one() -> None:
    rng = np.random.default_rng(11)
    a = rng.exponential(0.2, 2000)  # latencies, s; p95 = 0.2 ln 20 = 0.599
    slower = rng.exponential(0.3, 2000)  # p95 = 0.899: 0.3 s more
    same = rng.exponential(0.2, 2000)
    diff = bootstrap_diff(list(a), list(slower), "p95")
    assert diff is not None and diff.significant
    assert diff.low <= 0.3 * np.log(20) - 0.2 * np.log(20) <= diff.high
    null = bootstrap_diff(list(a), list(same), "p95")
    assert null is not None and not null.significant


def test_paired_bootstrap_sees_a_small_shift_that_unpaired_cannot() -> None:
    """Inputs differ a lot from each other (0.1-10 s) and B is 20 ms slower on every one:
    pairing removes the input-to-input spread, so only the paired interval excludes 0."""
    rng = np.random.default_rng(5)
    a = rng.uniform(0.1, 10.0, 200)
    b = a + 0.02 + rng.normal(0, 0.005, 200)
    paired = bootstrap_diff(list(a), list(b), "mean", paired=True)
    unpaired = bootstrap_diff(list(a), list(b), "mean")
    assert paired is not None and paired.method == "paired bootstrap" and paired.significant
    assert paired.low <= 0.02 <= paired.high
    assert unpaired is not None and not unpaired.significant


def test_bootstrap_is_reproducible_and_refuses_ragged_pairs() -> None:
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.5, 6.0]
    assert bootstrap_diff(a, b, "mean") == bootstrap_diff(a, b, "mean")
    assert bootstrap_diff([], b, "mean") is None
    with pytest.raises(ValueError, match="paired samples differ in length"):
        bootstrap_diff(a, b[:3], "mean", paired=True)


# -- how a difference reads ------------------------------------------------------------------
def test_measure_reads_as_change_interval_and_verdict() -> None:
    cost = Measure("cost per record", "usd", 0.0001, 0.00006,
                   Difference(-0.00004, -0.00005, -0.00003, "paired bootstrap"))
    assert cost.change() == "-$0.000040 (-40%)"
    assert cost.summary() == ("cost per record -$0.000040 (-40%; 95% CI -$0.000050 … "
                              "-$0.000030, significant)")
    rate = Measure("error rate", "share", 0.10, 0.12, Difference(0.02, -0.01, 0.05, "newcombe"))
    assert rate.summary() == "error rate +2.0 pp (95% CI -1.0 pp … +5.0 pp, not significant)"
    free = Measure("tokens", "tokens", 0.0, 0.0, Difference(0.0, 0.0, 0.0, "bootstrap"))
    assert free.same and free.summary() == "tokens the same"
    assert format_amount(0.0123, "s") == "12.3 ms"
    assert format_amount(-0.0123, "s", signed=True) == "-12.3 ms"
