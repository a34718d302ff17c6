"""The chapters' explorers (:class:`~diffbook.booktools.explorer.Explorer`): the forward process, samplers at
equal cost, a sweep's samples and metrics, and a consistency model's jumps both ways."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.axes import Axes
from torch import Tensor

from diffbook.booktools.explorer import Control, Explorer, draw_points_or_images
from diffbook.diffusion import DDPM
from diffbook.samplers import EDMOptions, Sampler, SamplerOutput, sample_seeds
from diffbook.samplers.common import DenoiserFn
from diffbook.viz import plot_trajectories, scatter2d

# The forward process.


def forward_states(x0: Tensor, process: DDPM, t: int, seed: int = 0) -> Tensor:
    """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` of ``x0: (B, ...)`` with one fixed noise draw
    ``eps`` (seeded), so that moving ``t`` shows the same points drifting, not new ones: ``(B, ...)``."""
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    return process.q_sample(x0, torch.full((len(x0),), t, dtype=torch.long), eps)


def forward_explorer(
    x0: Tensor, process: DDPM, steps: Sequence[int] = (0, 50, 150, 300, 600, 999), seed: int = 0
) -> Explorer:
    """The forward process of ``x0``, 2D points ``(B, 2)`` or images ``(B, C, H, W)``, with the step as a slider."""

    def draw(axes: Sequence[Axes], state: tuple[int, Tensor]) -> None:
        t, x_t = state
        draw_points_or_images(axes[0], x_t, f"t = {t}  (σ = {float(process.sigmas[t]):.2g})")

    return Explorer(
        "The forward process: one noise draw, growing t",
        [Control("t", tuple(steps), "step t")],
        lambda t: (t, forward_states(x0, process, t, seed)),
        draw,
    )


# Samplers.

SAMPLER_LABELS = {"DDIM": "ddim", "DDPM ancestral": "ddpm", "EDM Euler": "euler", "EDM Heun": "heun"}


def sampler_at_nfe(label: str, nfe: int, churn: float = 0.0) -> Sampler:
    """The sampler of one of :data:`SAMPLER_LABELS` at (about) ``nfe`` network evaluations.

    DDIM, ancestral DDPM and Euler take ``nfe`` steps; Heun takes ``(nfe + 1) // 2`` steps, ``2N - 1``
    evaluations. EDM's samplers use Karras levels over the process's range and ``S_churn = churn`` (the others
    ignore it).
    """
    if label not in SAMPLER_LABELS:
        raise ValueError(f"unknown sampler {label!r}; choose one of {tuple(SAMPLER_LABELS)}")
    name = SAMPLER_LABELS[label]
    if name in ("euler", "heun"):
        steps = nfe if name == "euler" else (nfe + 1) // 2
        return Sampler(name, steps, EDMOptions(S_churn=churn))
    return Sampler(name, nfe)


def sampler_explorer(
    denoiser: DenoiserFn,
    process: DDPM,
    count: int,
    reference: Tensor | None = None,
    nfe: Sequence[int] = (5, 9, 19, 49),
    samplers: Sequence[str] = tuple(SAMPLER_LABELS),
    churn: Sequence[float] = (0.0, 10.0, 40.0),
    paths: int = 12,
) -> Explorer:
    """Samples of 2D points from seeds ``0 .. count - 1`` and the paths of the first ``paths``, with the sampler,
    its NFE and EDM's churn as controls; ``reference: (N, 2)`` data are drawn in grey behind them. Paths are
    drawn in the samplers' common variance-preserving coordinates ``x / sqrt(1 + sigma^2)``."""

    def compute(nfe: int, sampler: str, churn: float) -> SamplerOutput:
        chosen = sampler_at_nfe(sampler, nfe, churn)
        return sample_seeds(denoiser, chosen, range(count), (2,), return_trajectory=True, process=process)

    def draw(axes: Sequence[Axes], out: SamplerOutput) -> None:
        ax = axes[0]
        if reference is not None:
            scatter2d(ax, reference, color="0.8")
        scatter2d(ax, out.samples, color="C0")
        plot_trajectories(ax, out.trajectory or [], count=paths)  # compute asks for the trajectory
        ax.set_title(f"NFE {out.nfe}", fontsize=9)

    return Explorer(
        "Samplers at equal NFE (rows: sampler, columns: NFE; churn 0)",
        [
            Control("nfe", tuple(nfe), "NFE"),
            Control("sampler", tuple(samplers), "sampler"),
            Control("churn", tuple(churn), "S_churn (EDM)"),
        ],
        compute,
        draw,
        static=("nfe", "sampler"),
        panel_size=2.4,
    )


# Iso-Diffusion: a sweep over the penalty's weight.


@dataclass(frozen=True)
class SweepPoint:
    """One value of a swept key: its first seed's samples and the mean of each metric over seeds."""

    value: float
    samples: Tensor
    metrics: dict[str, float]


def sweep_points(sweep_dir: str | Path, key: str = "objective.weight", where: str = "") -> list[SweepPoint]:
    """The points of a finished ``run_sweep`` along ``key``, ordered by value, from its ``results.json``.

    ``where`` (for example ``"data.name=two_moons"``) keeps the grid points whose overrides contain it.
    """
    sweep_dir = Path(sweep_dir)
    results = json.loads((sweep_dir / "results.json").read_text())
    rows = [row for row in results["summary"] if not where or where in row["overrides"]]
    points = []
    for row in rows:
        value = float(next(item.split("=", 1)[1] for item in row["overrides"] if item.startswith(f"{key}=")))
        first = min((r for r in results["runs"] if r["overrides"] == row["overrides"]), key=lambda r: r["seed"])
        metrics = {name: mean for name, (mean, _std) in _metric_columns(row).items()}
        samples = torch.load(sweep_dir / first["run"] / "samples.pt", weights_only=True)
        points.append(SweepPoint(value, samples, metrics))
    if not points:
        raise ValueError(f"{sweep_dir / 'results.json'} has no grid point along {key!r} matching {where!r}")
    return sorted(points, key=lambda point: point.value)


def _metric_columns(row: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The ``[mean, std]`` columns of a summary row (its metrics and ``train_seconds``)."""
    return {
        name: (value[0], value[1])
        for name, value in row.items()
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)
    }


def sweep_explorer(
    sweep_dir: str | Path,
    key: str = "objective.weight",
    where: str = "",
    metrics: Sequence[str] = ("precision", "recall", "density", "coverage"),
    symbol: str = "λ",
) -> Explorer:
    """Samples of a 2D sweep at each value of ``key`` beside the metrics against that value, the current one
    marked: for chapter 3's sweep of the isotropy penalty's weight."""
    points = sweep_points(sweep_dir, key, where)
    by_value = {point.value: point for point in points}
    values = [point.value for point in points]

    def draw(axes: Sequence[Axes], point: SweepPoint) -> None:
        scatter2d(axes[0], point.samples, title=f"{symbol} = {point.value:g}")
        for name in metrics:
            axes[1].plot(values, [p.metrics[name] for p in points], marker="o", ms=3, label=name)
            axes[1].plot(point.value, point.metrics[name], "ko", ms=5)
        axes[1].axvline(point.value, color="k", lw=0.6)
        axes[1].set(xlabel=symbol, title="mean over seeds")
        axes[1].legend(fontsize=7)

    return Explorer(
        f"A sweep over {symbol}: samples and metrics",
        [Control("value", tuple(values), symbol)],
        lambda value: by_value[value],
        draw,
        panels=2,
        static=("value",),
    )


# Bidirectional consistency: jumps t -> u both ways.


def _vp_scale(level: float) -> float:
    return (1 + level**2) ** 0.5


Jump = Callable[[Tensor, float, float], Tensor]


@dataclass(frozen=True)
class JumpState:
    """Points at level ``t``, where the model sends them at ``u``, and where the exact flow would."""

    t: float
    u: float
    x_t: Tensor
    jumped: Tensor
    exact: Tensor | None

    @property
    def rms_error(self) -> float | None:
        """Root-mean-square distance per coordinate between the model's jump and the exact flow, if known."""
        return None if self.exact is None else float((self.jumped - self.exact).square().mean().sqrt())


def jump_state(x0: Tensor, jump: Jump, t: float, u: float, exact: Jump | None = None, seed: int = 0) -> JumpState:
    """Noise ``x0: (B, ...)`` to level ``t`` with one seeded draw and jump to ``u`` (down or up)."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    x_t = x0 + t * noise
    with torch.no_grad():
        return JumpState(t, u, x_t, jump(x_t, t, u), None if exact is None else exact(x_t, t, u))


def jump_explorer(
    x0: Tensor,
    jump: Jump,
    exact: Jump | None = None,
    starts: Sequence[float] = (80.0, 10.0, 2.0, 0.5),
    targets: Sequence[float] = (0.002, 0.5, 2.0, 10.0, 80.0),
    arrows: int = 25,
) -> Explorer:
    """A two-time map ``jump(x, t, u)`` on 2D data ``x0: (B, 2)``: points noised to ``t`` (grey), sent to ``u``
    (blue), beside the exact flow map ``exact`` (orange) when given. Arrows join a few points to their jumps.
    Every state is drawn as ``x / sqrt(1 + level^2)``, so that levels from 0.002 to 80 share one window, and the
    error in each title is measured on that scale."""

    def draw(axes: Sequence[Axes], state: JumpState) -> None:
        ax = axes[0]
        start, jumped = state.x_t / _vp_scale(state.t), state.jumped / _vp_scale(state.u)
        scatter2d(ax, start, color="0.7")
        if state.exact is not None:
            scatter2d(ax, state.exact / _vp_scale(state.u), color="C1", s=4)
        scatter2d(ax, jumped, color="C0")
        for a, b in zip(start[:arrows], jumped[:arrows], strict=True):
            ax.annotate("", b.tolist(), a.tolist(), arrowprops={"arrowstyle": "->", "lw": 0.5, "color": "k"})
        way = "generate" if state.u < state.t else "invert" if state.u > state.t else "identity"
        error = "" if state.rms_error is None else f"\nRMS vs exact {state.rms_error / _vp_scale(state.u):.3f}"
        ax.set_title(f"{state.t:g} → {state.u:g} ({way}){error}", fontsize=8)

    return Explorer(
        "Jumps t → u both ways (rows: start t, columns: target u)",
        [Control("u", tuple(targets), "target u"), Control("t", tuple(starts), "start t")],
        lambda u, t: jump_state(x0, jump, t, u, exact),
        draw,
        static=("u", "t"),
        panel_size=2.4,
    )
