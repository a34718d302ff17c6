"""The denoising (MSE) objective that every paper in the book starts from.

For a denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` the loss is EDM's
``lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2`` with ``lambda = 1 / c_out^2``, which equals the plain
MSE of the raw network against its *effective target* ``(x_0 - c_skip x) / c_out``. The process picks
what that target is: ``eps`` for DDPM's ``L_simple``, ``x_0`` or ``v`` for the other DDPM parametrisations,
and EDM's unit-variance mixture for EDM. The loss is computed in that raw space, where it is well scaled.

The noisy input is formed in variance-preserving coordinates ``x_vp = x / sqrt(1 + sigma^2)`` and the denoiser
is evaluated there (:meth:`~diffbook.diffusion.Denoiser.raw_vp`): the same loss, which also exists at the last
step of a zero-terminal-SNR schedule, where ``sigma = inf`` and ``x`` itself is infinite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffbook.diffusion.denoiser import Denoiser
from diffbook.diffusion.parametrization import append_dims, vp_coefficients
from diffbook.objectives.registry import OBJECTIVES


def split_batch(batch: Tensor | tuple | list) -> tuple[Tensor, Tensor | None]:
    """``(x0, class_labels)`` from a bare tensor or an ``(images, labels)`` pair."""
    if isinstance(batch, (tuple, list)):
        x0, labels = batch
        return x0, labels
    return batch, None


@dataclass
class DenoisingLoss:
    """MSE in the raw network's space, with noise levels drawn from the model's process.

    ``label_dropout`` replaces class labels by the null class with that probability, which trains the
    unconditional branch that classifier-free guidance needs.
    """

    label_dropout: float = 0.0

    def __call__(
        self, model: Denoiser, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``batch``: ``x0: (B, ...)`` or ``(x0, labels: (B,))``. Returns ``loss`` (scalar); ``eps_pred`` and
        ``x0_pred: (B, ...)``, the noise and the clean sample the model predicts, still attached to the graph so
        that a penalty can be added on top (:mod:`diffbook.objectives.iso`, :mod:`diffbook.objectives.sadm`);
        ``sigma`` and ``per_sample`` loss, both ``(B,)`` and detached, for logs."""
        x0, labels = split_batch(batch)
        sigma = model.process.sample_sigma(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=_device(generator, x0)).to(x0)
        alpha, s = (append_dims(c.to(x0.dtype), x0.ndim) for c in vp_coefficients(sigma))
        x = alpha * x0 + s * noise
        out, (c_skip, c_out, _, _) = model.raw_vp(x, sigma, self._drop_labels(model, labels, generator))
        target = (x0 - c_skip * x) / c_out
        per_sample = (out - target).square().flatten(1).mean(dim=1)
        x0_pred = c_skip * x + c_out * out  # D(x), from the variance-preserving state
        eps_pred = (x - alpha * x0_pred) / s  # (x_vp - alpha D) / s = (x - D(x)) / sigma
        return {
            "loss": per_sample.mean(),
            "eps_pred": eps_pred,
            "x0_pred": x0_pred,
            "per_sample": per_sample.detach(),
            "sigma": sigma.detach(),
        }

    def _drop_labels(self, model: Denoiser, labels: Tensor | None, generator) -> Tensor | None:
        return drop_labels(model, labels, self.label_dropout, generator)


def drop_labels(
    model: Denoiser, labels: Tensor | None, probability: float, generator: torch.Generator | None = None
) -> Tensor | None:
    """``labels: (B,)`` with each replaced by the null class ``num_classes`` of ``model.net`` with ``probability``."""
    if labels is None or probability == 0:
        return labels
    # The package's U-Net and MLP keep the count on their condition embedding.
    embed = getattr(model.net, "embed", None)
    num_classes = int(getattr(model.net, "num_classes", None) or getattr(embed, "num_classes", 0) or 0)
    if num_classes == 0:
        raise ValueError("label_dropout needs a class-conditional network (num_classes > 0)")
    drop = dropout_mask(labels.shape[0], probability, generator, labels)
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def dropout_mask(n: int, probability: float, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """``(n,)`` booleans on ``like``'s device, each True with ``probability``: which conditions to drop."""
    return (torch.rand(n, generator=generator, device=_device(generator, like)) < probability).to(like.device)


def _device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


OBJECTIVES.register("denoising", DenoisingLoss)
