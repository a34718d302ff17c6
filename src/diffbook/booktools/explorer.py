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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from diffbook.viz import scatter2d, show_images

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


def draw_points_or_images(ax: Axes, x: Tensor, title: str, **style: Any) -> None:
    """``x: (B, 2)`` as a scatter plot, ``(B, C, H, W)`` in [-1, 1] as an image grid of the first 36."""
    if x.ndim == 2 and x.shape[1] == 2:
        scatter2d(ax, x, title=title, **style)
    else:
        show_images(ax, x[:36].clamp(-1, 1), title=title)
