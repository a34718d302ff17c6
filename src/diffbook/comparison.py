"""The book's comparison: the five papers' methods, and combinations of them, on the same data, metrics and seeds.

A :class:`Suite` is a list of :class:`Method` s run on each of its datasets with each seed. A method is a shipped
config with overrides; it trains from scratch, or fine-tunes the model that another method of the suite trained
on the same dataset with the same seed. Each of its :class:`Evaluation` s (sampler settings) is a row of the
table. Within a suite every from-scratch model trains the same number of steps and every fine-tuning the same
number more, and each row reports what it cost: its steps and training seconds, pre-training included.

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
import multiprocessing
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffbook.config import load_config, to_yaml
from diffbook.profiles import current_profile, pick
from diffbook.runtime.progress import progress_bar
from diffbook.sweep import evaluate_run, mean_std, train_run

SUITES = ("toy", "digits")


@dataclass(frozen=True)
class Evaluation:
    """One way of sampling a trained model: ``sample.*`` overrides, and the name its row adds to the method's."""

    name: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """A file name stem: ``"Euler, 2 NFE"`` -> ``euler_2_nfe``; ``default`` for the config's own sampler."""
        return _slug(self.name) or "default"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class Method:
    """A config with overrides, trained from scratch or fine-tuned from the method labelled ``finetunes``."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()
    finetunes: str | None = None
    evaluations: tuple[Evaluation, ...] = (Evaluation(),)

    @property
    def slug(self) -> str:
        """A directory name: ``"SADM + Iso"`` -> ``sadm_iso``."""
        return _slug(self.label)

    def row(self, evaluation: Evaluation) -> str:
        """The table row of one evaluation: ``"BCM, 2 NFE"``."""
        return f"{self.label}, {evaluation.name}" if evaluation.name else self.label


@dataclass(frozen=True)
class Suite:
    """Every method on every dataset (``data.name``) with seeds ``0 .. seeds - 1``.

    ``overrides`` apply to every run, before the method's; ``num_samples`` is the size of both the sample and
    the reference set of each evaluation; ``metrics`` are the summary's columns and figure panels, in order.
    """

    name: str
    datasets: tuple[str, ...]
    methods: tuple[Method, ...]
    metrics: tuple[str, ...]
    num_samples: int
    seeds: int = 3
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        labels = [method.label for method in self.methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        for method in self.methods:
            if method.finetunes is not None and labels.index(method.finetunes) > labels.index(method.label):
                raise ValueError(f"{method.label!r} fine-tunes {method.finetunes!r}, which must come before it")
        if self.seeds < 1:
            raise ValueError(f"a suite needs at least one seed, got {self.seeds}")

    def method(self, label: str) -> Method:
        """The method labelled ``label``."""
        for method in self.methods:
            if method.label == label:
                return method
        raise ValueError(f"no method {label!r} in suite {self.name!r}; methods: {[m.label for m in self.methods]}")


# Euler's 1, 2 and 4 steps put the MSE baseline at the network calls BCM spends.
_EULER = tuple(Evaluation(f"Euler, {n} NFE", ("sample.sampler=euler", f"sample.steps={n}")) for n in (1, 2, 4))
_HEUN = Evaluation("Heun, 35 NFE")
_BCM = tuple(Evaluation(f"{n} NFE", (f"sample.steps={n}",)) for n in (1, 2, 4))
_ISO_OVER_SP = "objective={kind: iso, weight: 0.1, base: {kind: self_perceptual}}"


def _methods(dataset: str, scratch: int, finetune: int, ddpm_steps: int) -> tuple[Method, ...]:
    """The methods of a suite on ``dataset`` (``toy`` or ``digits``): ``scratch`` steps from scratch, then
    ``finetune`` steps more; the DDPM-epsilon models sample with ``ddpm_steps`` ancestral steps."""
    s, m = (f"train.steps={scratch}",), (f"train.steps={finetune}", "train.warmup_steps=0")
    ddpm = (*s, f"sample.steps={ddpm_steps}") + (("train.batch_size=256",) if dataset == "toy" else ())
    continued_lr = {"toy": ("train.lr=5e-4",), "digits": ("train.lr=2e-4",)}[dataset]
    methods = [
        Method("MSE (EDM)", f"{dataset}/edm", s, evaluations=(_HEUN, *_EULER)),
        Method("MSE (EDM), continued", f"{dataset}/edm", (*m, *continued_lr), "MSE (EDM)"),
        Method("SADM", f"{dataset}/sadm", m, "MSE (EDM)"),
        Method("MSE (DDPM eps)", f"{dataset}/iso", (*ddpm, "objective.weight=0")),
        Method("Iso-Diffusion", f"{dataset}/iso", ddpm),
        Method("MSE (v, zero SNR)", f"{dataset}/sp_pretrain", s),
        Method("MSE (v), continued", f"{dataset}/sp_pretrain", (*m, "train.lr=2e-4"), "MSE (v, zero SNR)"),
        Method("Self-perceptual", f"{dataset}/self_perceptual", m, "MSE (v, zero SNR)"),
        Method("BCM", f"{dataset}/bcm", (*s, f"objective.total_steps={scratch}"), evaluations=_BCM),
        Method("Self-perceptual + Iso", f"{dataset}/self_perceptual", (*m, _ISO_OVER_SP), "MSE (v, zero SNR)"),
        Method("SADM + Iso", f"{dataset}/sadm", (*m, "objective.base={kind: iso, weight: 0.1}"), "MSE (EDM)"),
    ]
    if dataset == "digits":  # a 2D point has no spatial tokens: the attention backbone is an image model
        tmsa = ("network.kind=diffit_unet", "network.preset=digits8", "network.overrides={dropout: 0.0}")
        methods.insert(3, Method("DiffiT (TMSA)", "digits/diffit8", s))
        methods.append(Method("DiffiT (TMSA) + Iso", "digits/iso", (*ddpm, *tmsa)))
        # quick: the image networks' code paths, in seconds; the objectives' run in the toy suite
        quick = ("MSE (EDM)", "DiffiT (TMSA)", "BCM")
        methods = pick(quick=[method for method in methods if method.label in quick], book=methods)
    return tuple(methods)


def suite(name: str, seeds: int | None = None) -> Suite:
    """The shipped suite ``toy`` (three 2D sets) or ``digits`` (scikit-learn's digits at 8 x 8), at the active
    profile's scale (``quick``: a reduced suite that proves the code paths; ``book``: the chapter's numbers)."""
    if name == "toy":
        return Suite(
            "toy",
            pick(quick=("eight_gaussians",), book=("eight_gaussians", "two_moons", "checkerboard")),
            _methods("toy", pick(quick=150, book=2000), pick(quick=50, book=250), ddpm_steps=1000),
            ("precision", "recall", "density", "coverage", "sliced_wasserstein", "pairwise_w1"),
            num_samples=pick(quick=500, book=3000),
            seeds=seeds or pick(quick=1, book=3),
            overrides=("data.n=20000", "train.log_every=50", "train.checkpoint_every=500"),
        )
    if name == "digits":
        return Suite(
            "digits",
            ("digits",),
            _methods("digits", pick(quick=20, book=150), pick(quick=10, book=50), ddpm_steps=100),
            ("fid", "precision", "recall", "density", "coverage"),
            num_samples=pick(quick=100, book=300),
            seeds=seeds or pick(quick=1, book=3),
            overrides=("data.resolution=8", "network.overrides.resolution=8", "train.log_every=10"),
        )
    raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITES)}")


def run_dir(out_dir: str | Path, dataset: str, method: Method, seed: int) -> Path:
    """Where one method's run on one dataset with one seed keeps its files."""
    return Path(out_dir) / dataset / f"{method.slug}-seed{seed}"


def eval_path(run: Path, evaluation: Evaluation) -> Path:
    """The record of one evaluation of the run in ``run``; its samples are beside it, ``samples-<name>.pt``."""
    return run / f"eval-{evaluation.slug}.json"


def samples_path(run: Path, evaluation: Evaluation) -> Path:
    return run / f"samples-{evaluation.slug}.pt"


@dataclass(frozen=True)
class _Task:
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
    def parent(self) -> _Task | None:
        finetunes = self.method.finetunes
        if finetunes is None:
            return None
        return _Task(self.suite, self.suite.method(finetunes), self.dataset, self.seed, self.out_dir)

    def config(self, evaluation: Evaluation = Evaluation()) -> dict[str, Any]:
        overrides = [*self.suite.overrides, f"data.name={self.dataset}", *self.method.overrides]
        if self.parent is not None:
            overrides.append(f"network.init_from={self.parent.run_dir / 'checkpoint.pt'}")
        return load_config(self.method.config, [*overrides, *evaluation.overrides, f"train.seed={self.seed}"])

    @property
    def done(self) -> bool:
        return all(eval_path(self.run_dir, evaluation).exists() for evaluation in self.method.evaluations)


def run_task(task: _Task, progress: bool = True) -> list[dict[str, Any]]:
    """Train the task's model (or load it when trained) and write one record per evaluation not yet on disk.

    Returns the records of every evaluation, in the method's order."""
    run, cfg = task.run_dir, task.config()
    saved = run / "config.yaml"
    if saved.exists() and saved.read_text() != to_yaml(cfg):
        raise ValueError(f"{run} holds a run of another config: delete it, or give the suite another out_dir")
    if not task.done:
        run.mkdir(parents=True, exist_ok=True)
        saved.write_text(to_yaml(cfg))
        model, seconds = train_run(cfg, run, task.seed, progress, desc=f"{task.dataset} {run.name}")
        cost = _training_cost(task, cfg["train"]["steps"], seconds)
        for evaluation in task.method.evaluations:
            if eval_path(run, evaluation).exists():
                continue
            cfg = task.config(evaluation)
            scores = evaluate_run(model, cfg, task.seed, task.suite.num_samples, samples_path(run, evaluation))
            record = {
                "dataset": task.dataset,
                "method": task.method.label,
                "row": task.method.row(evaluation),
                "seed": task.seed,
                **scores,
                "train_steps": cost["total_steps"],
                "train_seconds": cost["total_seconds"],
            }
            eval_path(run, evaluation).write_text(json.dumps(record, indent=2) + "\n")
    return [json.loads(eval_path(run, evaluation).read_text()) for evaluation in task.method.evaluations]


def _training_cost(task: _Task, steps: int, seconds: float) -> dict[str, float]:
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
        _Task(suite, method, dataset, seed, out_dir)
        for seed in range(suite.seeds)
        for dataset in suite.datasets
        for method in suite.methods
    ]
    for task in tasks[: len(suite.methods) * len(suite.datasets)]:
        task.config()  # a bad key fails before anything trains
    start = time.perf_counter()
    records = _run_tasks(tasks, jobs, progress)
    results = {
        "suite": suite.name,
        "profile": current_profile(),
        "command": " ".join(["python -m diffbook", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else None,
        "seeds": suite.seeds,
        "wall_seconds": time.perf_counter() - start,
        "compute_seconds": _compute_seconds(tasks, records),
        "methods": [asdict(method) for method in suite.methods],
        "runs": records,
        "summary": summarize(records),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown_table(results["summary"], suite.metrics) + "\n")
    figure = plot_summary(results["summary"], suite.metrics)
    figure.savefig(out_dir / "comparison.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)  # saved, not shown: a notebook draws the summary where its text wants it
    return results


def _compute_seconds(tasks: Sequence[_Task], records: Sequence[dict[str, Any]]) -> float:
    """The seconds every training (each counted once, not with its pre-training) and every sampling took."""
    training = sum(json.loads((task.run_dir / "train.json").read_text())["seconds"] for task in tasks)
    return training + sum(record["sample_seconds"] for record in records)


def _run_tasks(tasks: list[_Task], jobs: int, progress: bool) -> list[dict[str, Any]]:
    """Run the tasks, each after the one it fine-tunes; returns their records in task order."""
    with progress_bar(range(len(tasks)), desc=f"benchmark ({len(tasks)} runs)", enabled=progress) as bar:
        if jobs <= 1:
            results = {}
            for task in sorted(tasks, key=lambda t: t.parent is not None):  # stable: seeds stay in order
                results[task] = run_task(task, progress)
                bar.update()
        else:
            results = _run_parallel(tasks, jobs, bar)
    return [record for task in tasks for record in results[task]]


def _run_parallel(tasks: list[_Task], jobs: int, bar) -> dict[_Task, list[dict[str, Any]]]:
    results: dict[_Task, list[dict[str, Any]]] = {}
    waiting, running = list(tasks), {}
    context = multiprocessing.get_context("spawn")  # forking a process that has run torch can hang
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        while waiting or running:
            # No more tasks in flight than workers: a killed driver leaves no queue for its workers to go on with.
            ready = [t for t in waiting if t.parent is None or t.parent in results][: jobs - len(running)]
            for task in ready:
                waiting.remove(task)
                running[pool.submit(run_task, task, False)] = task
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                task = running.pop(future)
                results[task] = future.result()
                bar.set_postfix_str(f"{task.dataset}: {task.method.label}, seed {task.seed}", refresh=False)
                bar.update()
    return results


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset and table row, in the order they first appear: ``dataset``, ``row``, ``method``,
    ``seeds``, ``nfe``, ``train_steps``; each metric's, ``train_seconds``' and ``sample_seconds``' (mean, std)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["row"]), []).append(record)
    rows = []
    for (dataset, row), group in groups.items():
        first = group[0]
        summary = {"dataset": dataset, "row": row, "method": first["method"], "seeds": len(group)}
        summary |= {"nfe": first["nfe"], "train_steps": first["train_steps"]}
        for metric in first["metrics"]:
            summary[metric] = mean_std([record["metrics"][metric] for record in group])
        for cost in ("train_seconds", "sample_seconds"):
            summary[cost] = mean_std([record[cost] for record in group])
        rows.append(summary)
    return rows


METRIC_NAMES = {
    "fid": "FID ↓",
    "precision": "precision ↑",
    "recall": "recall ↑",
    "density": "density",
    "coverage": "coverage ↑",
    "sliced_wasserstein": "sliced W ↓",
    "pairwise_w1": "pairwise W1 ↓",
}


def markdown_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str], digits: int = 3) -> str:
    """The summary as one markdown table: dataset, method, NFE, training steps and seconds, ``mean ± std`` of
    each of ``metrics``."""
    header = ["data", "method", "NFE", "steps", "train s", *(METRIC_NAMES.get(m, m) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["dataset"], row["row"], str(row["nfe"]), str(row["train_steps"]), f"{row['train_seconds'][0]:.0f}"]
        cells += [f"{row[m][0]:.{digits}f} ± {row[m][1]:.{digits}f}" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(rows: Sequence[dict[str, Any]], metrics: Sequence[str]):
    """One panel per metric: each table row's mean ± std over seeds, one colour per dataset; the dotted line is
    the first row of each dataset (the MSE baseline)."""
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(row["row"] for row in rows))
    datasets = list(dict.fromkeys(row["dataset"] for row in rows))
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(2.4 * len(metrics) + 2.2, 0.26 * len(labels) + 1.2), sharey=True, squeeze=False
    )
    offsets = torch.linspace(-0.25, 0.25, len(datasets)) if len(datasets) > 1 else torch.zeros(1)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for color, (dataset, offset) in enumerate(zip(datasets, offsets.tolist(), strict=True)):
            mine = [row for row in rows if row["dataset"] == dataset]
            y = [labels.index(row["row"]) + offset for row in mine]
            mean, std = zip(*(row[metric] for row in mine), strict=True)
            ax.errorbar(mean, y, xerr=std, fmt="o", ms=3.5, capsize=2, color=f"C{color}", label=dataset)
            ax.axvline(mine[0][metric][0], color=f"C{color}", lw=0.8, ls=":")
        ax.set_title(METRIC_NAMES.get(metric, metric), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(labels)), labels, fontsize=8)
    axes[0, 0].invert_yaxis()
    if len(datasets) > 1:
        axes[0, -1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def load_samples(out_dir: str | Path, dataset: str, method: Method, evaluation: Evaluation, seed: int = 0):
    """The samples a run saved for one evaluation: ``(N, 2)`` points or ``(N, C, R, R)`` images in [-1, 1]."""
    return torch.load(samples_path(run_dir(out_dir, dataset, method, seed), evaluation))


__all__ = [
    "SUITES",
    "Evaluation",
    "Method",
    "Suite",
    "load_samples",
    "markdown_table",
    "plot_summary",
    "run_suite",
    "suite",
    "summarize",
]
