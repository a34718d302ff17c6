"""Interactive explorers: move a control, and the figure follows.

An explorer is a picture that depends on a few controls (a noise level, a sampler, a number of evaluations),
each taking its values from a short list, so that every state can be computed ahead of time. A chapter opens
one with a single call and leaves it as the cell's value:

    forward_explorer(data, DDPM(T=1000))

One display carries two representations of the same explorer:

- a live widget (ipywidgets): a slider or menu per control above a picture that is redrawn when a control
  moves. JupyterLab, Jupyter Notebook and Colab show this one whenever a kernel is running;
- a static figure of precomputed states (the first control along a row, the second, if any, down the rows).
  The built book shows this one: ``_config.yml`` tells the book's HTML builder to skip widget views, which
  have no kernel behind them there.

The states are computed by ``compute`` functions that know nothing of widgets, so they are tested as plain
functions; :meth:`Explorer.widget` wires controls to them.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from diffbook.diffusion import DDPM
from diffbook.samplers import SamplerOutput, ddim_sample, ddpm_sample, edm_sample, karras_sigmas
from diffbook.samplers.common import DenoiserFn
from diffbook.viz import plot_trajectories, scatter2d, show_images

State = Any
Draw = Callable[[Sequence[Axes], State], None]


@dataclass(frozen=True)
class Control:
    """One control: its name (the keyword ``compute`` takes), the values it offers, and its label."""

    name: str
    values: tuple[Any, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError(f"control {self.name!r} offers no values")

    @property
    def default(self) -> Any:
        return self.values[0]


class Explorer:
    """A figure as a function of ``controls``: ``compute(**values) -> state``, ``draw(axes, state)``.

    ``panels`` is the number of axes one state is drawn on. States are cached, so each is computed once
    whichever way it is asked for. The static figure shows the values of ``static[0]`` along a row and those
    of ``static[1]`` (if given) down the rows, every other control at its first value; it defaults to the
    first control.
    """

    def __init__(
        self,
        title: str,
        controls: Sequence[Control],
        compute: Callable[..., State],
        draw: Draw,
        panels: int = 1,
        static: Sequence[str] | None = None,
        panel_size: float = 2.8,
    ) -> None:
        names = [control.name for control in controls]
        static = tuple(static or names[:1])
        if not controls or len(set(names)) != len(names):
            raise ValueError(f"an explorer needs controls with distinct names, got {names}")
        if not 1 <= len(static) <= 2 or not set(static) <= set(names) or (len(static) == 2 and panels != 1):
            raise ValueError(f"static must name one control, or two when a state has one panel; got {static}")
        self.title, self.controls, self.panels = title, tuple(controls), panels
        self._compute, self._draw, self._static, self._size = compute, draw, static, panel_size
        self._cache: dict[tuple, State] = {}

    def values(self, **chosen: Any) -> dict[str, Any]:
        """Every control's value: ``chosen`` where given, its default elsewhere; unknown names or values raise."""
        known = {control.name: control for control in self.controls}
        for name, value in chosen.items():
            if name not in known:
                raise ValueError(f"{name!r} is not a control of this explorer; its controls are {sorted(known)}")
            if value not in known[name].values:
                raise ValueError(f"{name}={value!r} is not offered; choose one of {list(known[name].values)}")
        return {name: chosen.get(name, control.default) for name, control in known.items()}

    def state(self, **chosen: Any) -> State:
        """The state at these control values (defaults elsewhere), computed once."""
        values = self.values(**chosen)
        key = tuple(values.values())
        if key not in self._cache:
            self._cache[key] = self._compute(**values)
        return self._cache[key]

    def figure(self, **chosen: Any) -> Figure:
        """One row of ``panels`` axes: the state at these values."""
        fig, axes = plt.subplots(1, self.panels, figsize=(self._size * self.panels, self._size), squeeze=False)
        self._draw(list(axes[0]), self.state(**chosen))
        fig.tight_layout()
        return fig

    def static_figure(self) -> Figure:
        """The precomputed states of the static grid, as one figure."""
        controls = {control.name: control for control in self.controls}
        across = controls[self._static[0]].values
        down = controls[self._static[1]].values if len(self._static) == 2 else (None,)
        ncols = len(across) * self.panels
        fig, axes = plt.subplots(len(down), ncols, figsize=(self._size * ncols, self._size * len(down)), squeeze=False)
        for row, low in enumerate(down):
            for col, value in enumerate(across):
                chosen = {self._static[0]: value} | ({self._static[1]: low} if low is not None else {})
                self._draw(list(axes[row, col * self.panels : (col + 1) * self.panels]), self.state(**chosen))
        fig.suptitle(self.title)
        fig.tight_layout()
        return fig

    def widget(self):
        """Controls above a picture of the current state, redrawn whenever a control changes."""
        import ipywidgets as widgets

        image = widgets.Image(format="png", value=figure_png(self.figure()))
        inputs = {control.name: _control_widget(control, widgets) for control in self.controls}

        def redraw(_change: dict | None = None) -> None:
            image.value = figure_png(self.figure(**{name: box.value for name, box in inputs.items()}))

        for box in inputs.values():
            box.observe(redraw, names="value")
        header = widgets.HTML(f"<b>{self.title}</b>")
        return widgets.VBox([header, widgets.HBox(list(inputs.values())), image])

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        bundle = self.widget()._repr_mimebundle_(include=include, exclude=exclude)
        bundle["image/png"] = base64.b64encode(figure_png(self.static_figure())).decode("ascii")
        bundle["text/plain"] = f"{type(self).__name__}: {self.title}"
        return bundle


def _control_widget(control: Control, widgets):
    """A slider for numbers, a menu for anything else."""
    label = control.label or control.name
    numeric = all(isinstance(value, int | float) and not isinstance(value, bool) for value in control.values)
    if numeric:
        return widgets.SelectionSlider(
            options=list(control.values), value=control.default, description=label, continuous_update=False
        )
    return widgets.Dropdown(options=list(control.values), value=control.default, description=label)


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed, so that nothing is drawn twice inline."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _draw_points_or_images(ax: Axes, x: Tensor, title: str, **style: Any) -> None:
    """``x: (B, 2)`` as a scatter plot, ``(B, C, H, W)`` in [-1, 1] as an image grid of the first 36."""
    if x.ndim == 2 and x.shape[1] == 2:
        scatter2d(ax, x, title=title, **style)
    else:
        show_images(ax, x[:36].clamp(-1, 1), title=title)


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
        _draw_points_or_images(axes[0], x_t, f"t = {t}  (σ = {float(process.sigmas[t]):.2g})")

    return Explorer(
        "The forward process: one noise draw, growing t",
        [Control("t", tuple(steps), "step t")],
        lambda t: (t, forward_states(x0, process, t, seed)),
        draw,
    )


# Samplers.

SAMPLERS = ("DDIM", "DDPM ancestral", "EDM Euler", "EDM Heun")


def sample_at_nfe(
    sampler: str,
    denoiser: DenoiserFn,
    process: DDPM,
    noise: Tensor,
    nfe: int,
    churn: float = 0.0,
    seed: int = 1,
    return_trajectory: bool = False,
) -> SamplerOutput:
    """Sample ``noise: (B, ...)`` with one of :data:`SAMPLERS` at (about) ``nfe`` network evaluations.

    DDIM, ancestral DDPM and Euler take ``nfe`` steps; Heun takes ``(nfe + 1) // 2`` steps, ``2N - 1``
    evaluations. EDM's samplers use Karras levels over the process's finite range and ``S_churn = churn``
    (the others ignore it). Stochastic samplers draw from a generator seeded with ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    levels = (process.sigma_min, process.sigma_max)
    if sampler == "DDIM":
        return ddim_sample(denoiser, process, noise, steps=nfe, return_trajectory=return_trajectory)
    if sampler == "DDPM ancestral":
        return ddpm_sample(
            denoiser, process, noise, steps=nfe, generator=generator, return_trajectory=return_trajectory
        )
    if sampler in ("EDM Euler", "EDM Heun"):
        solver = "euler" if sampler == "EDM Euler" else "heun"
        steps = nfe if solver == "euler" else (nfe + 1) // 2
        return edm_sample(
            denoiser,
            noise,
            karras_sigmas(steps, *levels),
            solver=solver,
            S_churn=churn,
            generator=generator,
            return_trajectory=return_trajectory,
        )
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")


def sampler_explorer(
    denoiser: DenoiserFn,
    process: DDPM,
    noise: Tensor,
    reference: Tensor | None = None,
    nfe: Sequence[int] = (5, 9, 19, 49),
    samplers: Sequence[str] = SAMPLERS,
    churn: Sequence[float] = (0.0, 10.0, 40.0),
    paths: int = 12,
) -> Explorer:
    """Samples of 2D ``noise: (B, 2)`` and the paths of the first ``paths`` points, with the sampler, its NFE
    and EDM's churn as controls; ``reference: (N, 2)`` data are drawn in grey behind them. Paths are drawn in
    the samplers' common variance-preserving coordinates ``x / sqrt(1 + sigma^2)``."""

    def compute(nfe: int, sampler: str, churn: float) -> SamplerOutput:
        return sample_at_nfe(sampler, denoiser, process, noise, nfe, churn, return_trajectory=True)

    def draw(axes: Sequence[Axes], out: SamplerOutput) -> None:
        ax = axes[0]
        if reference is not None:
            scatter2d(ax, reference, color="0.8")
        scatter2d(ax, out.samples, color="C0")
        plot_trajectories(ax, out.trajectory, count=paths)
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
        points.append(SweepPoint(value, torch.load(sweep_dir / first["run"] / "samples.pt"), metrics))
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


# DiffiT: attention maps as the noise level moves.


@dataclass(frozen=True)
class AttentionState:
    """One query pixel's attention in one TMSA layer at one noise level.

    ``noisy: (C, H, W)`` is the input ``x0 + sigma eps``; ``maps: (heads, h, w)`` the query's attention weights
    on the layer's ``h x w`` grid (zero outside its window); ``query`` its ``(row, col)`` on that grid;
    ``time_weight: (heads,)`` the weight on a separate time token (zero unless the layer has one).
    """

    sigma: float
    noisy: Tensor
    maps: Tensor
    query: tuple[int, int]
    time_weight: Tensor

    @property
    def entropy(self) -> Tensor:
        """Each head's attention entropy in nats, ``(heads,)``: ``log(window^2)`` when uniform over the window."""
        p = torch.cat([self.maps.flatten(1), self.time_weight[:, None]], dim=1)
        return -(p * p.clamp_min(1e-30).log()).sum(1)


def attention_layers(net: torch.nn.Module) -> list[str]:
    """The names of a network's windowed attention layers (:class:`~diffbook.nets.diffit.WindowAttention`)."""
    from diffbook.nets.diffit import WindowAttention

    return [name for name, module in net.named_modules() if isinstance(module, WindowAttention)]


@torch.no_grad()
def attention_inputs(denoiser: torch.nn.Module, noisy: Tensor, sigma: float, layer: str) -> tuple[Tensor, Tensor]:
    """What the attention layer named ``layer`` of ``denoiser.net`` (a DiffiT network inside a
    :class:`~diffbook.diffusion.Denoiser`) receives when the denoiser runs on ``noisy: (B, C, H, W)`` at level
    ``sigma``: its tokens ``(B, h, w, dim)`` and time token ``(B, time_dim)``, caught by a forward hook. The layer's
    ``attention_probabilities``, ``qkv`` and ``time_projections`` then take them apart."""
    attention = denoiser.net.get_submodule(layer)
    caught: list[tuple[Tensor, Tensor]] = []
    handle = attention.register_forward_hook(lambda module, args, output: caught.append(args))
    try:
        denoiser(noisy, torch.full((len(noisy),), sigma, dtype=noisy.dtype))
    finally:
        handle.remove()
    return caught[0]


@torch.no_grad()
def attention_summary(denoiser: torch.nn.Module, noisy: Tensor, sigma: float, layer: str) -> tuple[float, float]:
    """Two numbers for the attention layer ``layer`` on the images ``noisy: (B, C, H, W)`` at level ``sigma``:

    - the entropy of the attention rows in nats, averaged over images, windows, heads and queries
      (``log(window^2)`` when uniform);
    - for TMSA, the size of the time query against the spatial ones, ``||q_t|| / rms_i ||a_i||`` averaged over
      images, where ``q_i = a_i + q_t``: how strongly time steers the queries (NaN for layers without TMSA).
    """
    attention = denoiser.net.get_submodule(layer)
    tokens, time_token = attention_inputs(denoiser, noisy, sigma, layer)
    p = attention.attention_probabilities(tokens, time_token)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item()
    if attention.time_input != "qkv":
        return entropy, float("nan")
    C = tokens.shape[-1]
    spatial = attention.qkv(tokens)[..., :C].norm(dim=-1).square().mean(dim=(1, 2)).sqrt()  # (B,)
    time_query = attention.time_projections(time_token)[:, :C].norm(dim=-1)  # (B,)
    return entropy, (time_query / spatial).mean().item()


@torch.no_grad()
def attention_state(
    denoiser: torch.nn.Module, x0: Tensor, sigma: float, layer: str, query: tuple[int, int], seed: int = 0
) -> AttentionState:
    """Attention of the pixel ``query`` of ``x0: (1, C, H, W)`` in the layer named ``layer`` of
    ``denoiser.net`` (see :func:`attention_inputs`), at noise level ``sigma``, on ``x0 + sigma eps`` with one
    seeded ``eps``. The query moves to the layer's grid by integer scaling.
    """
    attention = denoiser.net.get_submodule(layer)
    noisy = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    tokens, time_token = attention_inputs(denoiser, noisy, sigma, layer)
    probs = attention.attention_probabilities(tokens, time_token)[0]  # (nW, heads, N, M)
    h, w = tokens.shape[1:3]
    row, col = query[0] * h // x0.shape[-2], query[1] * w // x0.shape[-1]
    size = attention.window
    window = (row // size) * (w // size) + col // size
    weights = probs[window, :, (row % size) * size + col % size]  # (heads, M)
    maps = torch.zeros(len(weights), h, w, dtype=weights.dtype)
    top, left = (row // size) * size, (col // size) * size
    maps[:, top : top + size, left : left + size] = weights[:, : size * size].reshape(-1, size, size)
    time_weight = weights[:, size * size :].sum(1)
    return AttentionState(sigma, noisy[0], maps, (row, col), time_weight)


def attention_explorer(
    denoiser: torch.nn.Module,
    x0: Tensor,
    sigmas: Sequence[float] = (80.0, 10.0, 1.0, 0.1, 0.01),
    query: tuple[int, int] | None = None,
    layers: Sequence[str] | None = None,
) -> Explorer:
    """Where one pixel of the image ``x0: (1, C, H, W)`` looks, head by head, as the noise level moves: the
    noisy input with the query marked, beside each head's attention map in the chosen layer (brighter = more
    weight), for a trained DiffiT denoiser. The query defaults to the image's centre."""
    query = query or (x0.shape[-2] // 2, x0.shape[-1] // 2)
    layers = tuple(layers or attention_layers(denoiser.net))

    def draw(axes: Sequence[Axes], state: AttentionState) -> None:
        show_images(axes[0], state.noisy[None], title=f"σ = {state.sigma:g}")
        scale = state.noisy.shape[-1] / state.maps.shape[-1]
        axes[0].plot((state.query[1] + 0.5) * scale - 0.5, (state.query[0] + 0.5) * scale - 0.5, "r+", ms=10)
        mosaic = torch.cat([head / head.max().clamp_min(1e-12) for head in state.maps], dim=1)
        axes[1].imshow(mosaic.numpy(), cmap="magma", vmin=0, vmax=1)
        for k in range(len(state.maps)):
            axes[1].plot(state.query[1] + k * state.maps.shape[-1], state.query[0], "c+", ms=6)
        entropy = ", ".join(f"{e:.2f}" for e in state.entropy)
        axes[1].set_title(f"heads 1-{len(state.maps)}: entropy {entropy}", fontsize=7)
        axes[1].set_axis_off()

    return Explorer(
        "TMSA attention of one pixel as the noise level moves",
        [Control("sigma", tuple(sigmas), "σ"), Control("layer", layers, "layer")],
        lambda sigma, layer: attention_state(denoiser, x0, sigma, layer, query),
        draw,
        panels=2,
    )
