"""Schematics drawn from data, not pictures: the four moving parts of a diffusion model and the part of it each
of the book's papers changes."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

# The parts in the order data flows through them in training and sampling, each with what it owns.
PARTS = {
    "process": "noise levels and\npreconditioning",
    "network": "F(x; noise level,\nclass or text)",
    "objective": "the loss on the\nnetwork's prediction",
    "sampler": "from noise to data\nin NFE calls",
}
# The part each paper changes. BCM changes all four: a preconditioning of two noise levels, a network that takes
# the end of its jump, the loss that trains those jumps, and samplers that jump both ways.
PAPER_PARTS = {
    "Iso-Diffusion": ("objective",),
    "BCM": ("process", "network", "objective", "sampler"),
    "self-perceptual": ("objective",),
    "DiffiT": ("network",),
    "SADM": ("objective",),
}
BOX_WIDTH, BOX_HEIGHT, GAP = 2.2, 1.2, 0.6


def draw_moving_parts(ax: Axes) -> dict[str, list[str]]:
    """Draw :data:`PARTS` as boxes joined by arrows, with the papers that change each part listed under it;
    returns the papers drawn under each part."""
    under: dict[str, list[str]] = {part: [] for part in PARTS}
    for paper, parts in PAPER_PARTS.items():
        for part in parts:
            under[part].append(paper)
    for index, (part, owns) in enumerate(PARTS.items()):
        left = index * (BOX_WIDTH + GAP)
        box = FancyBboxPatch(
            (left, 0), BOX_WIDTH, BOX_HEIGHT, boxstyle="round,pad=0.05", facecolor=f"C{index}", alpha=0.25
        )
        ax.add_patch(box)
        ax.text(left + BOX_WIDTH / 2, 0.8, part, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(left + BOX_WIDTH / 2, 0.35, owns, ha="center", va="center", fontsize=8)
        papers = "\n".join(under[part]) or "(none of the five)"
        ax.text(left + BOX_WIDTH / 2, -0.2, papers, ha="center", va="top", fontsize=9, color=f"C{index}")
        if index:
            start, end = (left - GAP + 0.05, BOX_HEIGHT / 2), (left - 0.05, BOX_HEIGHT / 2)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="0.3"))
    ax.set_xlim(-0.2, len(PARTS) * (BOX_WIDTH + GAP) - GAP + 0.2)
    ax.set_ylim(-1.3, BOX_HEIGHT + 0.2)
    ax.set_axis_off()
    return under
