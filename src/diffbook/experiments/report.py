"""Reading many runs: records grouped into summary rows (mean and spread over seeds), and markdown tables of
them. Paired verdicts between two methods on the same seeds are :mod:`diffbook.experiments.paired`'s."""

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
