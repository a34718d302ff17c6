"""Running a comparison suite (:mod:`diffbook.experiments.suites`): every method on every dataset with every
seed, each row reporting what it cost, its steps and training seconds, pre-training included.

Layout of ``out_dir``::

    <dataset>/<method>-seed<k>/   the Trainer's checkpoint and log, config.yaml, train.json (written when the
                                  training finishes), and per evaluation eval-<name>.json and samples-<name>.pt
    results.json                  the command, the suite, every record and the summary (mean and std over seeds)
    table.md                      the summary as one markdown table
    comparison.png                the summary as a figure

A run whose evaluations are all on disk is not redone and an interrupted one resumes from its checkpoint, so a
suite can be stopped and started again, or given more seeds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from torch import Tensor

from diffbook.experiments.experiment import Experiment
from diffbook.experiments.pool import run_tasks
from diffbook.experiments.report import Record, format_mean_std, markdown_table, summarize
from diffbook.experiments.run_dir import claim_run_dir
from diffbook.experiments.scoring import evaluate
from diffbook.experiments.suites import Evaluation, Method, Suite
from diffbook.experiments.training import train_run
from diffbook.profiles import current_profile
from diffbook.viz.comparison import METRIC_NAMES, plot_summary


def run_dir(out_dir: str | Path, dataset: str, method: Method, seed: int) -> Path:
    """Where one method's run on one dataset with one seed keeps its files."""
    return Path(out_dir) / dataset / f"{method.slug}-seed{seed}"


def eval_path(run: Path, evaluation: Evaluation) -> Path:
    """The record of one evaluation of the run in ``run``; its samples are beside it, ``samples-<name>.pt``."""
    return run / f"eval-{evaluation.slug}.json"


def samples_path(run: Path, evaluation: Evaluation) -> Path:
    return run / f"samples-{evaluation.slug}.pt"


@dataclass(frozen=True)
class SuiteTask:
    """One method on one dataset with one seed: trained once, then sampled and scored once per evaluation."""

    suite: Suite
    method: Method
    dataset: str
    seed: int
    out_dir: Path

    @property
    def run_dir(self) -> Path:
        return run_dir(self.out_dir, self.dataset, self.method, self.seed)

    @property
    def parent(self) -> SuiteTask | None:
        finetunes = self.method.finetunes
        if finetunes is None:
            return None
        return SuiteTask(self.suite, self.suite.method(finetunes), self.dataset, self.seed, self.out_dir)

    def experiment(self, evaluation: Evaluation | None = None) -> Experiment:
        evaluation = evaluation or Evaluation()
        overrides = [*self.suite.overrides, f"data.name={self.dataset}", *self.method.overrides]
        if self.parent is not None:
            overrides.append(f"network.init_from={self.parent.run_dir / 'checkpoint.pt'}")
        return Experiment.load(self.method.config, [*overrides, *evaluation.overrides, f"train.seed={self.seed}"])

    @property
    def done(self) -> bool:
        return all(eval_path(self.run_dir, evaluation).exists() for evaluation in self.method.evaluations)


def run_task(task: SuiteTask, progress: bool = True) -> list[Record]:
    """Train the task's model (or load it when trained) and write one record per evaluation not yet on disk.

    Returns the records of every evaluation, in the method's order."""
    run, experiment = task.run_dir, task.experiment()
    # Strict: a finished evaluation is read back as it is, so even its bookkeeping keys must match.
    claim_run_dir(
        run, experiment, record=not task.done, allowed=frozenset(), fix="delete it, or give the suite another out_dir"
    )
    if not task.done:
        model, seconds = train_run(experiment, run, progress, desc=f"{task.dataset} {run.name}")
        cost = _training_cost(task, experiment.train.steps, seconds)
        for evaluation in task.method.evaluations:
            if not eval_path(run, evaluation).exists():
                record = _evaluation_record(task, evaluation, model, cost)
                eval_path(run, evaluation).write_text(json.dumps(record, indent=2) + "\n")
    return [json.loads(eval_path(run, evaluation).read_text()) for evaluation in task.method.evaluations]


def _evaluation_record(task: SuiteTask, evaluation: Evaluation, model: Any, cost: dict[str, float]) -> Record:
    experiment = task.experiment(evaluation)
    scores = evaluate(model, experiment, task.seed, task.suite.num_samples, samples_path(task.run_dir, evaluation))
    return {
        "dataset": task.dataset,
        "method": task.method.label,
        "row": task.method.row(evaluation),
        "seed": task.seed,
        **scores,
        "train_steps": cost["total_steps"],
        "train_seconds": cost["total_seconds"],
    }


def _training_cost(task: SuiteTask, steps: int, seconds: float) -> dict[str, float]:
    """The steps and seconds this training took, and with its pre-training's: ``train.json``, written once."""
    path = task.run_dir / "train.json"
    if path.exists():
        return json.loads(path.read_text())
    parent = {"total_steps": 0, "total_seconds": 0.0}
    if task.parent is not None:
        parent = json.loads((task.parent.run_dir / "train.json").read_text())
    cost = {
        "steps": steps,
        "seconds": seconds,
        "total_steps": steps + parent["total_steps"],
        "total_seconds": seconds + parent["total_seconds"],
    }
    path.write_text(json.dumps(cost, indent=2) + "\n")
    return cost


def run_suite(suite: Suite, out_dir: str | Path, jobs: int = 1, progress: bool = True) -> dict[str, Any]:
    """Every task of ``suite`` (resuming what is on disk); writes ``results.json``, ``table.md`` and
    ``comparison.png`` in ``out_dir`` and returns what ``results.json`` holds.

    ``jobs > 1`` trains that many models at once, in processes of one thread each; a fine-tuning starts as soon as
    the model it starts from is trained. Seeds go first, so that a stopped suite has whole seeds done.
    """
    out_dir = Path(out_dir)
    tasks = [
        SuiteTask(suite, method, dataset, seed, out_dir)
        for seed in range(suite.seeds)
        for dataset in suite.datasets
        for method in suite.methods
    ]
    for task in tasks[: len(suite.methods) * len(suite.datasets)]:
        task.experiment()  # a bad key fails before anything trains
    start = time.perf_counter()
    per_task = run_tasks(tasks, run_task, jobs, progress, desc="benchmark", depends_on=lambda task: task.parent)
    records = [record for task_records in per_task for record in task_records]
    summary = summarize_suite(records)
    results = {
        "suite": suite.name,
        "profile": current_profile(),
        "command": " ".join(["python -m diffbook", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else None,
        "seeds": suite.seeds,
        "wall_seconds": time.perf_counter() - start,
        "compute_seconds": _compute_seconds(tasks, records),
        "methods": [asdict(method) for method in suite.methods],
        "runs": records,
        "summary": summary,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(suite_table(summary, suite.metrics) + "\n")
    figure = plot_summary(summary, suite.metrics)
    figure.savefig(out_dir / "comparison.png", dpi=120, bbox_inches="tight")
    plt.close(figure)  # saved, not shown: a notebook draws the summary where its text wants it
    return results


def _compute_seconds(tasks: Sequence[SuiteTask], records: Sequence[Record]) -> float:
    """The seconds every training (each counted once, not with its pre-training) and every sampling took."""
    training = sum(json.loads((task.run_dir / "train.json").read_text())["seconds"] for task in tasks)
    return training + sum(record["sample_seconds"] for record in records)


def summarize_suite(records: Sequence[Record]) -> list[Record]:
    """One row per dataset and table row, in the order they first appear: ``dataset``, ``row``, ``seeds``,
    ``method``, ``nfe``, ``train_steps``; each metric's, ``train_seconds``' and ``sample_seconds``' (mean, std)."""
    return summarize(records, ("dataset", "row"), ("method", "nfe", "train_steps"), ("train_seconds", "sample_seconds"))


def suite_table(rows: Sequence[Record], metrics: Sequence[str], digits: int = 3) -> str:
    """The summary as one markdown table: dataset, method, NFE, training steps and seconds, ``mean ± std`` of
    each of ``metrics``."""
    header = ["data", "method", "NFE", "steps", "train s", *(METRIC_NAMES.get(m, m) for m in metrics)]
    cells = [
        [row["dataset"], row["row"], str(row["nfe"]), str(row["train_steps"]), f"{row['train_seconds'][0]:.0f}"]
        + [format_mean_std(row[m], digits) for m in metrics]
        for row in rows
    ]
    return markdown_table(header, cells)


def load_suite_samples(
    out_dir: str | Path, dataset: str, method: Method, evaluation: Evaluation, seed: int = 0
) -> Tensor:
    """The samples a run saved for one evaluation: ``(N, 2)`` points or ``(N, C, R, R)`` images in [-1, 1]."""
    return torch.load(samples_path(run_dir(out_dir, dataset, method, seed), evaluation), weights_only=True)
