"""Sampler paths as an animation that plays in the static book: an SVG per sampler, moved by a few lines of
JavaScript from the points themselves (JSON in the page), with a play button and a slider.

The page needs no video codec and no server, and the data are a few kilobytes where a frame-by-frame video
would be megabytes: what a reader downloads is the trajectory, as the sampler recorded it.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
from torch import Tensor

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
SIZE = 220  # pixels per panel

_SCRIPT = """
(function () {
  const root = document.getElementById("%(id)s");
  const data = JSON.parse(root.querySelector("script[type='application/json']").textContent);
  const slider = root.querySelector("input[type=range]");
  const button = root.querySelector("button");
  const label = root.querySelector(".diffbook-frame");
  let timer = null;
  function show(frame) {
    data.panels.forEach(function (panel, p) {
      const svg = root.querySelectorAll("svg")[p];
      panel.frames[frame].forEach(function (xy, k) {
        const dot = svg.querySelector("#%(id)s-p" + p + "-k" + k);
        dot.setAttribute("cx", xy[0]);
        dot.setAttribute("cy", xy[1]);
      });
    });
    slider.value = frame;
    label.textContent = "frame " + frame + " of " + (data.frames - 1);
  }
  function stop() { clearInterval(timer); timer = null; button.textContent = "play"; }
  button.addEventListener("click", function () {
    if (timer) { stop(); return; }
    if (Number(slider.value) >= data.frames - 1) { show(0); }
    button.textContent = "pause";
    timer = setInterval(function () {
      const next = Number(slider.value) + 1;
      if (next >= data.frames) { stop(); } else { show(next); }
    }, data.interval);
  });
  slider.addEventListener("input", function () { stop(); show(Number(slider.value)); });
  show(0);
})();
"""


def _frame_indices(length: int, frames: int) -> list[int]:
    """Which of a path's ``length`` states each of ``frames`` frames shows: the same fraction of the way."""
    return [round(k * (length - 1) / (frames - 1)) for k in range(frames)]


def _to_pixels(points: Tensor, lim: float) -> np.ndarray:
    """``(N, 2)`` data coordinates in ``[-lim, lim]^2`` -> SVG pixels, y pointing up as in a plot."""
    xy = points.detach().float().cpu().numpy()
    scale = SIZE / (2 * lim)
    return np.stack([(xy[:, 0] + lim) * scale, (lim - xy[:, 1]) * scale], axis=1)


def animate_paths(
    paths: Mapping[str, Sequence[Tensor]],
    background: Tensor | None = None,
    lim: float = 3.5,
    interval_ms: int = 80,
) -> str:
    """HTML that animates 2D sampler paths side by side, one panel per entry of ``paths``.

    ``paths[name]`` is a trajectory: a list of ``(B, 2)`` states (a sampler's ``trajectory``). Paths of different
    lengths play in step: each frame shows every sampler the same fraction of the way along. ``background:
    (M, 2)`` points are drawn in grey behind. Show it with ``IPython.display.HTML``.
    """
    if not paths:
        raise ValueError("animate_paths needs at least one path")
    lengths = {name: len(states) for name, states in paths.items()}
    if min(lengths.values()) < 2:
        raise ValueError(f"every path needs at least two states, got {lengths}")
    shapes = {tuple(state.shape) for states in paths.values() for state in states}
    if len(shapes) != 1 or len(shape := next(iter(shapes))) != 2 or shape[1] != 2:
        raise ValueError(f"every state must be (B, 2), the same B for every path; got shapes {sorted(shapes)}")
    frames = max(lengths.values())
    panels = [
        {"frames": [np.round(_to_pixels(states[i], lim), 1).tolist() for i in _frame_indices(len(states), frames)]}
        for states in paths.values()
    ]
    element = f"diffbook-animation-{uuid.uuid4().hex[:12]}"
    data = {"frames": frames, "interval": interval_ms, "panels": panels}
    grey = "" if background is None else _dots(_to_pixels(background, lim))
    count = next(iter(shapes))[0]
    svgs = "".join(_panel(element, p, name, grey, count) for p, name in enumerate(paths))
    return (
        f'<div id="{element}" class="diffbook-animation">'
        f'<div style="display:flex;gap:8px;flex-wrap:wrap">{svgs}</div>'
        f'<div><button type="button">play</button> <input type="range" min="0" max="{frames - 1}" value="0" '
        f'style="width:{SIZE * 2}px"> <span class="diffbook-frame"></span></div>'
        f'<script type="application/json">{json.dumps(data)}</script>'
        f"<script>{_SCRIPT % {'id': element}}</script></div>"
    )


def _dots(pixels: np.ndarray) -> str:
    return "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1" fill="#cccccc"/>' for x, y in pixels)


def _panel(element: str, index: int, title: str, background: str, count: int) -> str:
    dots = "".join(
        f'<circle id="{element}-p{index}-k{k}" r="3" fill="{COLOURS[k % len(COLOURS)]}"/>' for k in range(count)
    )
    return (
        f'<figure style="margin:0"><svg width="{SIZE}" height="{SIZE}" viewBox="0 0 {SIZE} {SIZE}" '
        f'style="border:1px solid #ddd">{background}{dots}</svg>'
        f'<figcaption style="text-align:center">{html.escape(title)}</figcaption></figure>'
    )
