"""Sweeps: one model per grid point and seed, trained, sampled and scored, then tabulated as mean +- std.

A grid is a list of ``key=v1,v2,...`` specs over config keys; their Cartesian product gives the grid points,
and every point is trained once per seed (``train.seed``). Each run lives in ``out/<point>-seed<k>/``: the
Trainer's checkpoint (an interrupted run resumes), ``samples.pt`` and ``metrics.json``. A run with a
``metrics.json`` is done and is not redone, so a sweep can be stopped and restarted, or extended. Scoring is
:mod:`diffbook.experiments.scoring`'s.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffbook.config import parse_value
from diffbook.experiments.experiment import Experiment
from diffbook.experiments.pool import run_tasks
from diffbook.experiments.report import Record, format_mean_std, markdown_table, summarize
from diffbook.experiments.run_dir import claim_run_dir
from diffbook.experiments.scoring import evaluate, flow_scores
from diffbook.experiments.training import train_run


@dataclass(frozen=True)
class SweepRun:
    """One grid point (its ``key=value`` overrides) trained with one seed, of the sweep over ``config``."""

    overrides: tuple[str, ...]
    seed: int
    config: str = ""
    base_overrides: tuple[str, ...] = ()
    out_dir: str = "."
    num_samples: int | None = None

    @property
    def name(self) -> str:
        """A directory name: ``objective.weight=0.1-seed0`` (characters a path dislikes become ``_``)."""
        point = "-".join(self.overrides) or "base"
        return re.sub(r"[^A-Za-z0-9=._-]", "_", f"{point}-seed{self.seed}")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def experiment(self) -> Experiment:
        """The config with the base overrides, the grid point's and ``train.seed``."""
        return Experiment.load(self.config, [*self.base_overrides, *self.overrides, f"train.seed={self.seed}"])


def parse_grid(specs: Sequence[str]) -> list[tuple[str, ...]]:
    """``["a.b=1,2", "c=x,y"]`` -> ``[("a.b=1", "c=x"), ("a.b=1", "c=y"), ...]``: the Cartesian product.

    An empty ``specs`` is one grid point with no overrides.
    """
    axes = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"a grid axis is key=v1,v2,..., got {spec!r}")
        axes.append([f"{key}={value.strip()}" for value in values.split(",")])
    return list(itertools.product(*axes))


def sweep_runs(grid: Sequence[tuple[str, ...]], seeds: Sequence[int], *common: Any) -> list[SweepRun]:
    """Every grid point with every seed, seed-major, so that a stopped sweep has every point at the first seeds;
    ``common`` are the remaining fields of :class:`SweepRun`, the same for every run."""
    return [SweepRun(tuple(point), seed, *common) for seed in seeds for point in grid]


def run_one(run: SweepRun, progress: bool = True) -> Record:
    """Train, sample and score one run, or read its ``metrics.json`` when it is already done.

    ``num_samples`` (default: 10,000 toy points, or the whole image set) is the size of both the sample and the
    reference set, so that PRDC compares equal counts. Returns the record written to ``metrics.json``.
    """
    experiment, record_path = run.experiment(), run.run_dir / "metrics.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    claim_run_dir(run.run_dir, experiment, fix="delete it, or give the sweep another --out")
    model, train_seconds = train_run(experiment, run.run_dir, progress, desc=run.name)
    record = {
        "run": run.name,
        "overrides": list(run.overrides),
        "seed": run.seed,
        **evaluate(model, experiment, run.seed, run.num_samples, run.run_dir / "samples.pt"),
        "train_steps": experiment.train.steps,
        "train_seconds": train_seconds,
    }
    record["metrics"] |= flow_scores(experiment, model, record["num_samples"], run.seed)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_sweep(
    config: str | Path,
    grid: Sequence[tuple[str, ...]],
    seeds: Sequence[int],
    out_dir: str | Path,
    base_overrides: Sequence[str] = (),
    num_samples: int | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> list[Record]:
    """Every run of ``grid x seeds`` (:func:`sweep_runs`, :func:`run_one`); writes ``results.json`` and
    ``table.md`` in ``out_dir``. ``jobs > 1`` trains that many runs at once
    (:func:`~diffbook.experiments.pool.run_tasks`). Returns the records in run order."""
    runs = sweep_runs(grid, seeds, str(config), tuple(base_overrides), str(out_dir), num_samples)
    for run in runs[: len(grid)]:  # fail on a bad key before any process starts
        run.experiment()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    records = run_tasks(runs, run_one, jobs, progress, desc="sweep")
    summary = summarize(records, group=("overrides",))
    (Path(out_dir) / "results.json").write_text(json.dumps({"runs": records, "summary": summary}, indent=2) + "\n")
    (Path(out_dir) / "table.md").write_text(sweep_table(summary) + "\n")
    return records


def sweep_table(rows: Sequence[Record], digits: int = 3) -> str:
    """A sweep's summary as a markdown table: one column per grid key, the seeds, ``mean ± std`` per metric."""
    keys = [override.partition("=")[0] for override in rows[0]["overrides"]]
    metrics = [name for name in rows[0] if name not in ("overrides", "seeds")]
    cells = [
        [
            *(o.partition("=")[2] for o in row["overrides"]),
            str(row["seeds"]),
            *(format_mean_std(row[m], digits) for m in metrics),
        ]
        for row in rows
    ]
    return markdown_table([*keys, "seeds", *metrics], cells)


def grid_values(rows: Sequence[Record], key: str, cast: Callable[[str], Any] = parse_value) -> list[Any]:
    """The value of grid ``key`` in each summary row, parsed (``"0.1"`` -> 0.1)."""
    return [cast(dict(o.split("=", 1) for o in row["overrides"])[key]) for row in rows]
