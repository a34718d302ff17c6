"""Verdicts from paired seeds: is method A better than method B, or is the difference not resolved?

A seed fixes the data order and the initial weights, so run ``i`` of A and run ``i`` of B are a pair, and the
question is about the differences ``d_i = a_i - b_i``. Their mean has the Student-t interval

    mean(d) ± t_{n-1, (1 + level) / 2} * std(d) / sqrt(n),

and the verdict follows from it alone: better or worse when the interval excludes 0 on that side, else no
detectable difference. When one table names a winner among ``m`` comparisons, each p-value is first adjusted by
Holm's step-down method (Holm 1979), which keeps the chance of any false "better" below ``1 - level``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over ``n`` pairs: its ``mean``, the ``half_width`` of its interval at ``level``, and the
    two-sided ``p_value`` of the paired t-test (the interval excludes 0 exactly when ``p_value < 1 - level``)."""

    mean: float
    half_width: float
    n: int
    p_value: float
    level: float = 0.95

    @property
    def interval(self) -> tuple[float, float]:
        return self.mean - self.half_width, self.mean + self.half_width

    def verdict(self, lower_is_better: bool, p_value: float | None = None) -> str:
        """``better``, ``worse`` (A against B) or :data:`NO_DIFFERENCE`; ``p_value``: an adjusted one (Holm's)
        in place of this comparison's own, when it is one of several."""
        resolved = (self.p_value if p_value is None else p_value) < 1 - self.level
        if not resolved:
            return NO_DIFFERENCE
        return "better" if (self.mean < 0) == lower_is_better else "worse"

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.mean:+.3g} [{low:+.3g}, {high:+.3g}] (n = {self.n})"


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """The paired comparison of ``a`` and ``b``, ``a[i]`` and ``b[i]`` from the same seed."""
    from scipy.stats import t  # scikit-learn's dependency, so always there

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired comparison needs two equal lists of at least 2 values, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    n = len(differences)
    mean = sum(differences) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    standard_error = std / math.sqrt(n)
    half_width = float(t.ppf((1 + level) / 2, n - 1)) * standard_error
    return PairedDifference(mean, half_width, n, _two_sided_p(mean, standard_error, n), level)


def _two_sided_p(mean: float, standard_error: float, n: int) -> float:
    from scipy.stats import t

    if standard_error == 0:
        return 1.0 if mean == 0 else 0.0  # every pair differs by the same amount: no spread to doubt it
    return float(2 * t.sf(abs(mean) / standard_error, n - 1))


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``m`` p-values, in their order: the ``k``-th smallest becomes
    ``max_{j <= k} min(1, (m - j + 1) p_(j))``. A comparison is resolved when its adjusted value is below alpha."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdicts(comparisons: Sequence[PairedDifference], lower_is_better: bool) -> list[str]:
    """The verdict of each of several comparisons read together, from Holm-adjusted p-values."""
    adjusted = holm_adjusted([comparison.p_value for comparison in comparisons])
    return [comparison.verdict(lower_is_better, p) for comparison, p in zip(comparisons, adjusted, strict=True)]
