"""Iso-Diffusion (Fernando et al. 2024): the denoising loss plus an isotropy penalty on the predicted noise.

The isotropy of ``z`` in ``R^n`` is ``||z||^2 / n``; it is 1 in expectation for ``z ~ N(0, I)``. With
``r_i = ||eps_theta,i||^2 / n`` over a batch of ``B`` samples, each at its own noise level:

- per-batch (the paper's definition, as the authors coded it; the default): ``(mean_i r_i - 1)^2``;
- per-sample: ``mean_i (r_i - 1)^2``.

On any batch, per-sample minus per-batch is exactly ``Var_i(r_i)``, so the two agree only when every sample has
the same isotropy. The MSE-optimal predictor ``E[eps | x_t]`` has isotropy below 1 (it averages over the noise
it cannot resolve); the penalty pushes it towards a rescaled ``c eps*`` with ``c > 1``: samples gain fidelity
(precision, density) and lose diversity (recall).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from diffbook.diffusion.denoiser import Denoiser
from diffbook.objectives.denoising import DenoisingLoss
from diffbook.objectives.registry import OBJECTIVES, ObjectiveContext, base_objective

PenaltyForm = Literal["batch", "sample"]
PENALTY_FORMS: tuple[str, ...] = ("batch", "sample")


def isotropy_per_sample(z: Tensor) -> Tensor:
    """``||z_i||^2 / n`` for each sample of ``z: (B, ...)``, with ``n`` the number of entries per sample: (B,).

    Accumulated in float64 so that large images do not lose precision; returned in ``z``'s dtype.
    """
    return z.reshape(len(z), -1).double().square().mean(dim=1).to(z.dtype)


def isotropy_penalty(eps_pred: Tensor, form: PenaltyForm = "batch") -> Tensor:
    """The penalty on ``eps_pred: (B, ...)``: ``(mean r - 1)^2`` (``"batch"``) or ``mean (r - 1)^2`` (``"sample"``).

    A scalar that keeps the graph, so it trains the network that produced ``eps_pred``.
    """
    r = eps_pred.flatten(1).square().mean(dim=1)
    if form == "batch":
        return (r.mean() - 1).square()
    if form == "sample":
        return (r - 1).square().mean()
    raise ValueError(f"form must be one of {', '.join(PENALTY_FORMS)}, got {form!r}")


@dataclass
class IsoLoss:
    """``base + weight * isotropy_penalty(eps_pred)``: the paper's lambda is ``weight``.

    ``base`` is any objective whose output holds ``eps_pred`` (the predicted noise, attached to the graph): the
    plain denoising loss by default, the self-perceptual or the hybrid loss as well, so the penalty stacks on
    other objectives. ``weight = 0`` returns the base loss unchanged, bit for bit.
    """

    weight: float = 0.0
    form: PenaltyForm = "batch"
    base: Callable[..., dict[str, Tensor]] = field(default_factory=DenoisingLoss)

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight (lambda) must be >= 0, got {self.weight}")
        if self.form not in PENALTY_FORMS:
            raise ValueError(f"form must be one of {', '.join(PENALTY_FORMS)}, got {self.form!r}")

    def __call__(
        self, model: Denoiser, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``batch`` as the base objective takes it. Adds ``isotropy: (B,)`` and the scalar ``penalty``, detached."""
        out = self.base(model, batch, generator)
        if "eps_pred" not in out:
            raise ValueError(f"the isotropy penalty needs a base objective that returns eps_pred, not {self.base!r}")
        penalty = isotropy_penalty(out["eps_pred"], self.form)
        return {
            **out,
            "loss": out["loss"] + self.weight * penalty,
            "penalty": penalty.detach(),
            "isotropy": isotropy_per_sample(out["eps_pred"].detach()),
        }


@dataclass(frozen=True)
class IsoOptions:
    """The ``objective`` section of ``kind: iso``: the penalty's weight and form, over ``base``."""

    weight: float = 0.0
    form: PenaltyForm = "batch"
    label_dropout: float = 0.0
    base: str | dict = "denoising"


def build_iso(options: IsoOptions, context: ObjectiveContext) -> IsoLoss:
    base = base_objective(options.base, options.label_dropout, context, "objective.base")
    return IsoLoss(options.weight, options.form, base)


OBJECTIVES.register("iso", IsoOptions, build_iso)
