"""Exact conversions between the four things a diffusion network can predict.

A noisy sample is ``x_t = alpha * x_0 + sigma * eps`` with ``eps ~ N(0, I)``. DDPM's variance-preserving
process has ``alpha = sqrt(alpha_bar_t)`` and ``sigma = sqrt(1 - alpha_bar_t)``; EDM's variance-exploding
coordinates have ``alpha = 1``. Every formula here holds for any ``(alpha, sigma)``:

- ``eps``:   the noise that was added.
- ``x0``:    the clean sample, ``E[x_0 | x_t]`` for an MSE-optimal model.
- ``v``:     ``alpha * eps - sigma * x_0`` (Salimans & Ho), so ``alpha * x_t - sigma * v = (alpha^2 + sigma^2) x_0``.
- ``score``: ``grad log p_t(x_t) = -eps / sigma`` (Tweedie).

``alpha`` and ``sigma`` broadcast against ``x_t``: pass scalars or tensors shaped ``(B, 1, ..., 1)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Prediction = Literal["eps", "x0", "v", "score"]
PREDICTIONS: tuple[str, ...] = ("eps", "x0", "v", "score")


def to_x0(pred: Tensor, kind: Prediction, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """The clean-sample estimate implied by a prediction of ``kind``. All tensors: (B, ...)."""
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x_t - sigma * pred) / alpha
    if kind == "v":
        return (alpha * x_t - sigma * pred) / (alpha**2 + sigma**2)
    if kind == "score":
        return (x_t + sigma**2 * pred) / alpha
    raise ValueError(f"unknown prediction {kind!r}; expected one of {PREDICTIONS}")


def from_x0(x0: Tensor, kind: Prediction, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """The prediction of ``kind`` that is consistent with the clean-sample estimate ``x0``."""
    if kind == "x0":
        return x0
    eps = (x_t - alpha * x0) / sigma
    if kind == "eps":
        return eps
    if kind == "v":
        return alpha * eps - sigma * x0
    if kind == "score":
        return -eps / sigma
    raise ValueError(f"unknown prediction {kind!r}; expected one of {PREDICTIONS}")


def convert(
    pred: Tensor,
    source: Prediction,
    target: Prediction,
    x_t: Tensor,
    alpha: Tensor | float,
    sigma: Tensor | float,
) -> Tensor:
    """Convert a prediction of kind ``source`` into kind ``target`` at the same ``x_t``."""
    if source == target:
        return pred
    return from_x0(to_x0(pred, source, x_t, alpha, sigma), target, x_t, alpha, sigma)


def vp_coefficients(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, s) = (1, sigma) / sqrt(1 + sigma^2)``: the variance-preserving coefficients of the EDM noise level
    ``sigma`` (``alpha = sqrt(alpha_bar)``, ``s = sqrt(1 - alpha_bar)`` for DDPM), shaped like ``sigma``.

    Written so that ``sigma = inf`` gives ``(0, 1)`` and ``sigma = 0`` gives ``(1, 0)``, without ``inf * 0``.
    """
    return (1 + sigma**2).rsqrt(), (1 + sigma**-2).rsqrt()


def append_dims(values: Tensor, ndim: int) -> Tensor:
    """Reshape ``values: (B,)`` to ``(B, 1, ..., 1)`` with ``ndim`` dimensions in all, for broadcasting."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def as_batch(sigma: Tensor | float, x: Tensor) -> Tensor:
    """A noise level as a ``(B,)`` tensor on ``x``'s device and dtype, from a float or a (B,) tensor."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])
