"""Reading many runs: records grouped into summary rows (mean and spread over seeds), paired intervals between
two methods on the same seeds, and markdown tables of both."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, int]:
    """The mean of ``a - b`` over paired rows (the same seed, say), the half-width of its Student-t interval at
    ``level``, and the number of pairs. The interval excludes 0 when the difference is resolved."""
    from scipy.stats import t  # scikit-learn's dependency, so always there

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired interval needs two equal lists of at least 2 values, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(differences)
    half_width = float(t.ppf(0.5 + level / 2, len(differences) - 1)) * std / math.sqrt(len(differences))
    return mean, half_width, len(differences)


def summarize(
    records: Sequence[Record],
    group: Sequence[str],
    carry: Sequence[str] = (),
    costs: Sequence[str] = ("train_seconds",),
) -> list[Record]:
    """One row per distinct value of the ``group`` keys, in the order they first appear: those keys, ``seeds``
    (the records in the group), the ``carry`` keys of its first record, and ``(mean, std)`` of each of its
    ``metrics`` and ``costs``."""
    groups: dict[tuple, list[Record]] = {}
    for record in records:
        groups.setdefault(tuple(_hashable(record[key]) for key in group), []).append(record)
    rows = []
    for members in groups.values():
        first = members[0]
        row: Record = {key: first[key] for key in group}
        row["seeds"] = len(members)
        row |= {key: first[key] for key in carry}
        for metric in first["metrics"]:
            row[metric] = mean_std([record["metrics"][metric] for record in members])
        for cost in costs:
            row[cost] = mean_std([record[cost] for record in members])
        rows.append(row)
    return rows


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of string cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def format_mean_std(value: Sequence[float], digits: int = 3) -> str:
    """``(mean, std)`` as ``mean ± std``."""
    return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
