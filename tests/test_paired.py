"""Paired verdicts: the Student-t interval and p-value against closed forms and scipy, Holm's adjustment against
a worked example, and verdicts that follow the interval."""

import math

import pytest
from scipy.stats import ttest_rel

from diffbook.experiments.paired import NO_DIFFERENCE, holm_adjusted, paired_difference, verdicts


def test_the_interval_of_five_pairs_is_the_closed_form():
    # d = 1..5: mean 3, std sqrt(2.5), t_{4, 0.975} = 2.776445.
    result = paired_difference([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert result.mean == 3 and result.n == 5
    assert result.half_width == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert result.interval == pytest.approx((3 - result.half_width, 3 + result.half_width))


def test_the_p_value_is_scipys_paired_t_test_and_agrees_with_the_interval():
    a, b = [0.31, 0.29, 0.35, 0.30, 0.33, 0.28], [0.30, 0.27, 0.31, 0.31, 0.30, 0.26]
    result = paired_difference(a, b)
    assert result.p_value == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
    low, high = result.interval
    assert (result.p_value < 0.05) == (low > 0 or high < 0)


def test_verdicts_follow_the_interval_and_the_direction_of_the_metric():
    lower, higher = [1.0, 1.1, 0.9, 1.05, 0.95], [2.0, 2.2, 1.9, 2.1, 2.0]
    assert paired_difference(lower, higher).verdict(lower_is_better=True) == "better"
    assert paired_difference(lower, higher).verdict(lower_is_better=False) == "worse"
    noisy = [2.0, 0.5, 3.0, 1.0, 1.6]
    assert paired_difference(noisy, higher).verdict(lower_is_better=True) == NO_DIFFERENCE


def test_holms_adjustment_of_a_worked_example():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 is 0.02, 0.03, 0.06, 0.04; the running maximum keeps 0.06.
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_a_difference_resolved_alone_can_be_unresolved_among_many():
    a, b = [1.00, 1.02, 0.98, 1.01, 0.99], [1.03, 1.03, 1.00, 1.05, 1.00]
    alone = paired_difference(a, b)
    assert 0.01 < alone.p_value < 0.05 and alone.verdict(lower_is_better=True) == "better"
    null = [paired_difference([1.0, 1.1, 0.9, 1.0, 1.2], [1.1, 1.0, 1.0, 0.9, 1.1]) for _ in range(4)]
    assert verdicts([alone, *null], lower_is_better=True)[0] == NO_DIFFERENCE


def test_equal_differences_are_resolved_and_bad_inputs_are_clear_errors():
    assert paired_difference([2, 3, 4], [1, 2, 3]).verdict(lower_is_better=False) == "better"
    assert paired_difference([1, 2], [1, 2]).verdict(lower_is_better=True) == NO_DIFFERENCE
    with pytest.raises(ValueError, match="two equal lists of at least 2 values"):
        paired_difference([1.0, 2.0], [1.0])
