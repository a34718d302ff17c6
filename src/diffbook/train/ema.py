"""Exponential moving average of parameters, with EDM's half-life measured in images."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(
    halflife_images: float, batch_size: int, images_seen: float = 0.0, rampup_ratio: float | None = None
) -> float:
    """Per-step decay ``0.5 ** (batch / half-life)``: the average forgets at the same rate per image seen,
    whatever the batch size.

    With EDM's ramp-up (``rampup_ratio``, 0.05 in its configs) the half-life is at most ``rampup_ratio *
    images_seen``, the images trained on before this step: the average starts as the live weights and forgets
    the early ones fast, instead of carrying the random initial weights for many half-lives.
    """
    if halflife_images <= 0:
        raise ValueError(f"the EMA half-life must be positive, got {halflife_images}")
    if rampup_ratio is not None:
        halflife_images = min(halflife_images, rampup_ratio * images_seen)
    return 0.5 ** (batch_size / max(halflife_images, 1e-8))


def initial_weight_share(halflife_images: float, batch_size: int, steps: int) -> float:
    """The share of the initial weights in the average after ``steps`` steps: ``decay ** steps``."""
    return ema_decay(halflife_images, batch_size) ** steps


def short_run_warning(
    halflife_images: float | None, batch_size: int, steps: int, rampup_ratio: float | None = None
) -> str | None:
    """A warning when the initial weights still make up more than 3% of the average at the end of the run
    (the run is under five half-lives): samples from such an average look untrained. None otherwise, and with
    a ramp-up, which gives the initial weights no share."""
    if halflife_images is None or rampup_ratio is not None:
        return None
    share = initial_weight_share(halflife_images, batch_size, steps)
    if share <= 0.5**5:
        return None
    halflife_steps = halflife_images / batch_size
    return (
        f"the EMA half-life ({halflife_images:g} images, {halflife_steps:.0f} steps at batch {batch_size}) is long "
        f"for {steps} steps: the initial weights still make up {share:.0%} of the EMA model that is sampled; "
        f"set train.ema_halflife_images to at most {steps * batch_size / 5:.0f} or train longer"
    )


class EMA:
    """A frozen copy of ``model`` whose parameters trail the live ones; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One step of the average, with ``decay`` (a ramp-up's) in place of the constant one when given."""
        weight = 1 - (self.decay if decay is None else decay)
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), weight)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
