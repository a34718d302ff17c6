"""Sweeps: one model per grid point and seed, trained, sampled and scored, then tabulated as mean +- std.

A grid is a list of ``key=v1,v2,...`` specs over config keys; their Cartesian product gives the grid points,
and every point is trained once per seed (``train.seed``). Each run lives in ``out/<point>-seed<k>/``: the
Trainer's checkpoint (an interrupted run resumes), ``samples.pt`` and ``metrics.json``. A run with a
``metrics.json`` is done and is not redone, so a sweep can be stopped and restarted, or extended.

Scoring follows the data. Toy points: precision, recall, density and coverage (k = 5), the sliced
Wasserstein distance and the W1 distance of pairwise distances (a structure statistic) against a fresh draw
of the same size; a consistency model on a Gaussian mixture adds its
multistep, inversion and jump scores against the exact ODE (:func:`flow_scores`). Digits: the same PRDC and FID
on the digits feature network against the whole set. Other image sets: on Inception features (needs the weights).
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffbook.config import (
    build_dataset,
    build_model,
    build_objective,
    build_sampler,
    build_train_config,
    is_toy,
    load_config,
    load_init_weights,
    num_classes,
    parse_value,
    sample_shape,
    to_yaml,
)
from diffbook.profiles import seed_everything
from diffbook.runtime.progress import progress_bar

REFERENCE_SEED_OFFSET = 1_000_003  # reference draws use seeds no training run uses


@dataclass(frozen=True)
class SweepRun:
    """One grid point (its ``key=value`` overrides) trained with one seed."""

    overrides: tuple[str, ...]
    seed: int

    @property
    def name(self) -> str:
        """A directory name: ``objective.weight=0.1-seed0`` (characters a path dislikes become ``_``)."""
        point = "-".join(self.overrides) or "base"
        return re.sub(r"[^A-Za-z0-9=._-]", "_", f"{point}-seed{self.seed}")


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


def sweep_runs(grid: Sequence[tuple[str, ...]], seeds: Sequence[int]) -> list[SweepRun]:
    """Every grid point with every seed, seed-major, so that a stopped sweep has every point at the first seeds."""
    return [SweepRun(tuple(point), seed) for seed in seeds for point in grid]


def run_config(config: str | Path, run: SweepRun, base_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config of one run: ``config`` with the base overrides, the grid point's and ``train.seed``."""
    return load_config(config, [*base_overrides, *run.overrides, f"train.seed={run.seed}"])


def run_one(
    config: str | Path,
    run: SweepRun,
    out_dir: str | Path,
    base_overrides: Sequence[str] = (),
    num_samples: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, sample and score one run, or read its ``metrics.json`` when it is already done.

    ``num_samples`` (default: 10,000 toy points, or the whole image set) is the size of both the sample and the
    reference set, so that PRDC compares equal counts. Returns the record written to ``metrics.json``.
    """
    cfg = run_config(config, run, base_overrides)
    run_dir = Path(out_dir) / run.name
    record_path = run_dir / "metrics.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

    model, train_seconds = train_run(cfg, run_dir, run.seed, progress, desc=run.name)
    record = {
        "run": run.name,
        "overrides": list(run.overrides),
        "seed": run.seed,
        **evaluate_run(model, cfg, run.seed, num_samples, run_dir / "samples.pt"),
        "train_steps": cfg["train"]["steps"],
        "train_seconds": train_seconds,
    }
    record["metrics"] |= flow_scores(cfg, model, record["num_samples"], run.seed)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def train_run(
    cfg: dict[str, Any], run_dir: Path, seed: int, progress: bool = True, desc: str | None = None
) -> tuple[torch.nn.Module, float]:
    """Train ``cfg``'s model in ``run_dir`` (resuming from its checkpoint; a finished run is only loaded).

    Returns the model to sample from (the EMA copy when there is one), in eval mode, and the seconds spent.
    """
    from diffbook.train import Trainer  # the trainer pulls in distributed set-up that scoring does not need

    start = time.perf_counter()
    seed_everything(seed)  # the initial weights differ by seed, and not with what ran before in this process
    model = load_init_weights(build_model(cfg), cfg)
    objective = build_objective(cfg, model)
    trainer = Trainer(
        model, objective, build_dataset(cfg), build_train_config(cfg), run_dir, progress=progress, desc=desc or "train"
    )
    trainer.fit()
    trained = trainer.ema.model if trainer.ema is not None else model
    return trained.eval(), time.perf_counter() - start


def evaluate_run(
    model: torch.nn.Module, cfg: dict[str, Any], seed: int, num_samples: int | None, save_to: Path | None = None
) -> dict[str, Any]:
    """Sample ``model`` with ``cfg``'s sampler as many times as the reference set has items, and score the
    samples (:func:`score`). Returns ``metrics``, ``num_samples``, ``nfe`` and ``sample_seconds``; the samples
    go to ``save_to`` when given."""
    reference = reference_set(cfg, seed, num_samples)
    start = time.perf_counter()
    samples = generate_samples(model, cfg, len(reference), seed=seed)
    sample_seconds = time.perf_counter() - start
    if save_to is not None:
        torch.save(samples, save_to)
    return {
        "metrics": score(cfg, samples, reference),
        "num_samples": len(reference),
        "nfe": build_sampler(cfg).nfe,
        "sample_seconds": sample_seconds,
    }


@torch.no_grad()
def generate_samples(model: torch.nn.Module, cfg: dict[str, Any], count: int, seed: int, batch: int = 10_000) -> Tensor:
    """``count`` samples ``(count, *sample_shape)`` from the config's sampler, all drawn from one seeded generator.

    A class-conditional model draws every class in turn (sample ``k`` has label ``k mod num_classes``), so
    that its samples are scored as the conditional model, with the config's guidance, that it is.
    """
    sampler, shape, classes = build_sampler(cfg), sample_shape(cfg), num_classes(cfg)
    labels = torch.arange(count) % classes if classes else None
    generator = torch.Generator().manual_seed(seed)
    chunks = []
    for start in range(0, count, batch):
        noise = torch.randn(min(batch, count - start), *shape, generator=generator)
        chunk_labels = None if labels is None else labels[start : start + len(noise)]
        chunks.append(sampler(model, noise, chunk_labels, generator).samples)
    return torch.cat(chunks)


def reference_set(cfg: dict[str, Any], seed: int, count: int | None = None) -> Tensor:
    """What samples are scored against. Toy: a fresh draw of ``count`` points (10,000 by default) with a seed
    that no training run uses. Images: the configured set (its first ``count``) as ``(N, C, R, R)`` uint8."""
    if is_toy(cfg):
        from diffbook.data import sample_toy

        return sample_toy(cfg["data"]["name"], count or 10_000, seed=REFERENCE_SEED_OFFSET + seed)
    from diffbook.sampling import load_reference

    channels, resolution, _ = sample_shape(cfg)
    data = cfg["data"]
    images = load_reference(data["name"], resolution, channels, data.get("root", "data"), data.get("split", "train"))
    return images[:count]


def score(cfg: dict[str, Any], samples: Tensor, reference: Tensor) -> dict[str, float]:
    """Toy: PRDC (k = 5), the sliced Wasserstein distance and the pairwise-distance W1. Images (``samples`` in
    [-1, 1], ``reference`` uint8): FID and PRDC on the digits feature network (digits) or on Inception features."""
    if is_toy(cfg):
        from diffbook.metrics import pairwise_distance_w1, prdc, sliced_wasserstein

        results = prdc(reference, samples, k=5)
        generator = torch.Generator().manual_seed(0)
        results["sliced_wasserstein"] = sliced_wasserstein(reference, samples, generator=generator)
        results["pairwise_w1"] = pairwise_distance_w1(reference, samples, generator=generator)
        return results
    from diffbook.metrics.features import InceptionFeatures, extract_features, feature_metrics, load_digits_feature_net
    from diffbook.sampling import to_uint8

    net = load_digits_feature_net() if cfg["data"]["name"] == "digits" else InceptionFeatures()
    fake = torch.from_numpy(to_uint8(samples)).permute(0, 3, 1, 2)
    fake_features, fake_logits = extract_features(net, fake)
    real_features, _ = extract_features(net, reference)
    return feature_metrics(["fid", "prdc"], fake_features, fake_logits, real_features)


def flow_scores(cfg: dict[str, Any], model: torch.nn.Module, count: int, seed: int) -> dict[str, float]:
    """A consistency model (``process.kind: bcm``) on a Gaussian-mixture toy set: its multistep generation,
    inversions and jumps against the exact ODE (:func:`diffbook.metrics.flow.consistency_scores`). Nothing for
    other runs, whose samples :func:`score` covers."""
    if cfg["process"]["kind"] != "bcm" or not is_toy(cfg):
        return {}
    from diffbook.data import GaussianMixture, density, has_density
    from diffbook.metrics.flow import consistency_scores

    name = cfg["data"]["name"]
    if not has_density(name) or not isinstance(mixture := density(name), GaussianMixture):
        return {}
    return consistency_scores(model, mixture, count, seed)


def run_sweep(
    config: str | Path,
    grid: Sequence[tuple[str, ...]],
    seeds: Sequence[int],
    out_dir: str | Path,
    base_overrides: Sequence[str] = (),
    num_samples: int | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every run of ``grid x seeds`` (see :func:`run_one`); writes ``results.json`` and ``table.md`` in ``out_dir``.

    ``jobs > 1`` trains that many runs at once in separate processes, one thread each: small models use a
    core far better that way than by sharing one process's threads. Returns the records in run order.
    """
    runs = sweep_runs(grid, seeds)
    for run in runs[: len(grid)]:  # fail on a bad key before any process starts
        run_config(config, run, base_overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arguments = [(str(config), run, str(out_dir), tuple(base_overrides), num_samples) for run in runs]
    records = _run_all(arguments, jobs, progress)
    summary = summarize(records)
    (out_dir / "results.json").write_text(json.dumps({"runs": records, "summary": summary}, indent=2) + "\n")
    (out_dir / "table.md").write_text(markdown_table(summary) + "\n")
    return records


def _run_all(arguments: list[tuple], jobs: int, progress: bool) -> list[dict[str, Any]]:
    with progress_bar(range(len(arguments)), desc="sweep", enabled=progress) as bar:
        if jobs <= 1:
            records = []
            for args in arguments:
                records.append(run_one(*args, progress=progress))
                bar.update()
            return records
        context = multiprocessing.get_context("spawn")  # forking a process that has run torch's threads can hang
        records: list[dict[str, Any] | None] = [None] * len(arguments)
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(run_one, *args, progress=False): index for index, args in enumerate(arguments)}
            for future in as_completed(futures):
                records[futures[future]] = future.result()
                bar.update()
        return records


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per grid point: its overrides, the number of seeds, and each metric's mean and sample std.

    Rows keep the order in which grid points first appear; ``std`` is 0 for a single seed.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(tuple(record["overrides"]), []).append(record)
    rows = []
    for overrides, group in groups.items():
        row: dict[str, Any] = {"overrides": list(overrides), "seeds": len(group)}
        for metric in group[0]["metrics"]:
            row[metric] = mean_std([record["metrics"][metric] for record in group])
        row["train_seconds"] = mean_std([record["train_seconds"] for record in group])
        rows.append(row)
    return rows


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def markdown_table(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """The summary as a markdown table: one column per grid key, then ``mean ± std`` per metric."""
    keys = [override.partition("=")[0] for override in rows[0]["overrides"]]
    metrics = [name for name in rows[0] if name not in ("overrides", "seeds")]
    header = [*keys, "seeds", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        values = [override.partition("=")[2] for override in row["overrides"]]
        cells = [f"{mean:.{digits}f} ± {std:.{digits}f}" for mean, std in (row[m] for m in metrics)]
        lines.append("| " + " | ".join([*values, str(row["seeds"]), *cells]) + " |")
    return "\n".join(lines)


def grid_values(rows: Sequence[dict[str, Any]], key: str, cast: Callable[[str], Any] = parse_value) -> list[Any]:
    """The value of grid ``key`` in each summary row, parsed (``"0.1"`` -> 0.1)."""
    return [cast(dict(o.split("=", 1) for o in row["overrides"])[key]) for row in rows]
