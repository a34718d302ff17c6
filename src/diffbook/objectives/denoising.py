"""The denoising (MSE) objective that every paper in the book starts from.

For a denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` the loss is EDM's
``lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2`` with ``lambda = 1 / c_out^2``, which equals the plain
MSE of the raw network against its *effective target* ``(x_0 - c_skip x) / c_out``. The process picks
what that target is: ``eps`` for DDPM's ``L_simple``, ``x_0`` or ``v`` for the other DDPM parametrisations,
and EDM's unit-variance mixture for EDM. The loss is computed in that raw space, where it is well scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffbook.diffusion.denoiser import Denoiser
from diffbook.diffusion.parametrization import append_dims


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
        """``batch``: ``x0: (B, ...)`` or ``(x0, labels: (B,))``. Returns ``loss`` (scalar); ``eps_pred: (B, ...)``,
        the noise the model predicts, still attached to the graph so that a penalty can be added on top (see
        :mod:`diffbook.objectives.iso`); ``sigma`` and ``per_sample`` loss, both ``(B,)`` and detached, for logs."""
        x0, labels = split_batch(batch)
        sigma = model.process.sample_sigma(x0.shape[0], generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=_device(generator, x0)).to(x0)
        x = x0 + append_dims(sigma, x0.ndim) * noise
        out, (c_skip, c_out, _, _) = model.raw(x, sigma, self._drop_labels(model, labels, generator))
        target = (x0 - c_skip * x) / c_out
        per_sample = (out - target).square().flatten(1).mean(dim=1)
        eps_pred = (x - c_skip * x - c_out * out) / append_dims(sigma, x.ndim)  # (x - D(x)) / sigma
        return {
            "loss": per_sample.mean(),
            "eps_pred": eps_pred,
            "per_sample": per_sample.detach(),
            "sigma": sigma.detach(),
        }

    def _drop_labels(self, model: Denoiser, labels: Tensor | None, generator) -> Tensor | None:
        if labels is None or self.label_dropout == 0:
            return labels
        num_classes = getattr(model.net, "num_classes", 0)
        if num_classes == 0:
            raise ValueError("label_dropout needs a class-conditional network (num_classes > 0)")
        drop = torch.rand(labels.shape, generator=generator, device=_device(generator, labels)) < self.label_dropout
        return torch.where(drop.to(labels.device), torch.full_like(labels, num_classes), labels)


def _device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device
