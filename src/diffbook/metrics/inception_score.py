"""Inception score (Salimans et al. 2016) from a classifier's predictions on generated images."""

from __future__ import annotations

import torch
from torch import Tensor


def _class_probabilities(predictions: Tensor, from_logits: bool) -> Tensor:
    """Float64 ``p(y | x): (N, K)``; probabilities are checked, since logits passed as such give a silent wrong IS."""
    predictions = predictions.double()
    if from_logits:
        return predictions.softmax(dim=1)
    if (predictions < 0).any() or (predictions.sum(dim=1) - 1).abs().max() > 1e-3:
        raise ValueError("rows must be probabilities (non-negative, summing to 1); pass from_logits=True for logits")
    return predictions


def _split_score(p: Tensor) -> Tensor:
    """``exp(E_x KL(p(y | x) || p(y)))`` with the marginal ``p(y)`` estimated from the same chunk ``p: (n, K)``."""
    marginal = p.mean(dim=0, keepdim=True)
    # xlogy makes 0 log 0 = 0, so confident one-hot predictions stay finite.
    kl = (torch.xlogy(p, p) - torch.xlogy(p, marginal)).sum(dim=1)
    return kl.mean().exp()


def inception_score(probabilities: Tensor, splits: int = 10, from_logits: bool = False) -> tuple[float, float]:
    """Mean and standard deviation of the Inception score over ``splits`` near-equal chunks of the samples.

    probabilities: (N, K) class probabilities ``p(y | x)``, or logits with ``from_logits=True``. The score is
    ``exp(E_x KL(p(y | x) || p(y)))``: high when each prediction is confident and the classes are used evenly,
    between 1 and K. As in the reference implementation the standard deviation is over chunks, without
    Bessel's correction.
    """
    if probabilities.ndim != 2 or not 1 <= splits <= len(probabilities):
        raise ValueError(f"expected (N, K) predictions with N >= splits = {splits}, got {tuple(probabilities.shape)}")
    p = _class_probabilities(probabilities, from_logits)
    scores = torch.stack([_split_score(chunk) for chunk in p.tensor_split(splits)])
    return float(scores.mean()), float(scores.std(correction=0))
