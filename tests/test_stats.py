"""dmlkit.analysis.stats, the one home of result statistics: gains paired by seed, the 95 %
t-interval, the "m ± h" text."""

from __future__ import annotations

import math

import pytest

from dmlkit.analysis.stats import MISSING, ci_text, mean_ci95, paired_gains, t975


def test_paired_gains_pair_by_seed_and_skip_what_one_side_lacks() -> None:
    arm = {3: 71.0, 1: 70.0, 2: None, 7: 60.0}
    base = {1: 69.5, 2: 68.0, 3: 70.0}
    assert paired_gains(arm, base) == [0.5, 1.0]  # seeds 1 and 3, in seed order
    assert paired_gains({}, base) == []


def test_the_interval_is_students_t_for_few_seeds_and_many() -> None:
    assert t975(2) == pytest.approx(4.3027, rel=1e-4)
    assert t975(4) == pytest.approx(2.7764, rel=1e-4)
    # beyond 30 seeds the quantile is still t's, not the normal's 1.96
    assert t975(40) == pytest.approx(2.0211, rel=1e-4)
    values = [1.0, 2.0, 4.0, 5.0]
    mean, half = mean_ci95(values)
    sd = math.sqrt(sum((v - 3.0) ** 2 for v in values) / 3)
    assert mean == 3.0 and half == pytest.approx(t975(3) * sd / 2)
    assert mean_ci95([2.0]) == (2.0, math.inf)


def test_ci_text() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert ci_text([1.0, 2.0, 3.0]) == f"+{mean:.2f} ± {half:.2f}" == "+2.00 ± 2.48"
    assert ci_text([-0.5], 1) == "-0.5"
    assert ci_text([]) == MISSING and ci_text([], missing="–") == "–"
