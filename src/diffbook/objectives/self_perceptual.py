"""The self-perceptual objective (Lin & Yang, "Diffusion Model with Perceptual Loss", arXiv 2401.00110).

A diffusion model trained with MSE becomes the perceptual network of its own fine-tuning loss. In
variance-preserving coordinates ``x_t = alpha_t x0 + s_t eps`` (``alpha^2 + s^2 = 1``), one step is:

1. ``x_t`` from data ``x0`` and noise ``eps`` at a step ``t``; the online model predicts ``v_hat``.
2. ``x0_hat = alpha_t x_t - s_t v_hat`` and ``eps_hat = s_t x_t + alpha_t v_hat``.
3. A second step ``t'``, uniform and independent of ``t``. The real sample ``x_t' = alpha' x0 + s' eps``; the
   predicted one ``x_hat_t' = alpha' x0_hat + s' eps_hat`` (``form="paper"``) or, as an ablation,
   ``alpha' x0_hat + s' eps`` (``form="same_noise"``).
4. ``L = mean || F*(x_hat_t', t', c) - F*(x_t', t', c) ||^2``, with ``F*`` the middle-block output of a frozen
   copy of the pre-trained model, given the same step ``t'`` and condition ``c`` on both branches.

Derived identities (chapter 5; checked in float64 by the tests). With ``alpha = cos phi``, ``s = sin phi``:
``x_hat_t' - x_t' = sin(phi' - phi) (v_hat - v)`` in the paper form, zero at ``t' = t`` whatever the prediction,
and ``cos(phi') (x0_hat - x0)`` in the same-noise form. For an affine ``F* = W x + b`` the loss is therefore
``sin^2(phi' - phi) ||W (v_hat - v)||^2`` (per element mean): a v-MSE in the metric of ``F*``'s Jacobian.

The frozen copy is taken from the online model when the objective is built (so: build it from the pre-trained
MSE weights), cut after the middle block, with ``requires_grad`` off and in eval mode. The objective holds it as
a plain attribute, not as a submodule, so the Trainer's optimizer, EMA, checkpoint and DistributedDataParallel
see the online model only; a resumed run rebuilds the objective from the same pre-trained weights (the
``train`` command does so from ``network.init_from``). Gradients reach the online model only through the
predicted input ``x_hat_t'``: that branch must run with autograd, and only the real branch runs without.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from diffbook.diffusion.denoiser import Denoiser, vp_scalings
from diffbook.diffusion.parametrization import append_dims, vp_coefficients
from diffbook.nets.features import middle_block_encoder
from diffbook.objectives.denoising import drop_labels, split_batch
from diffbook.objectives.registry import OBJECTIVES, ObjectiveContext

Form = Literal["paper", "same_noise"]
FORMS: tuple[str, ...] = ("paper", "same_noise")


def x0_eps_from_v(v: Tensor, x_t: Tensor, alpha: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """``(x0_hat, eps_hat) = (alpha x_t - s v, s x_t + alpha v) / (alpha^2 + s^2)``: exact for the true ``v``.

    ``v, x_t: (B, ...)``; ``alpha, s`` broadcast against them. Finite at ``alpha = 0``, where ``x0_hat = -v``.
    """
    norm = alpha**2 + s**2
    return (alpha * x_t - s * v) / norm, (s * x_t + alpha * v) / norm


def renoise_pair(
    x0: Tensor,
    eps: Tensor,
    x0_hat: Tensor,
    eps_hat: Tensor,
    alpha: Tensor,
    s: Tensor,
    form: Form = "paper",
) -> tuple[Tensor, Tensor]:
    """``(x_hat_t', x_t')``: the predicted and the real sample noised to the step with ``(alpha, s)``.

    The real one is ``alpha x0 + s eps``; the predicted one uses ``eps_hat`` (``"paper"``) or the true ``eps``
    (``"same_noise"``). Tensors ``(B, ...)``; ``alpha, s`` broadcast.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    real = alpha * x0 + s * eps
    predicted = alpha * x0_hat + s * (eps_hat if form == "paper" else eps)
    return predicted, real


def frozen_middle_block_encoder(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` cut after its middle block: only the encoder is copied, never the decoder."""
    return copy.deepcopy(middle_block_encoder(net)).eval().requires_grad_(False)


@dataclass
class SelfPerceptualLoss:
    """``objective(model, batch)`` for the self-perceptual loss of the module docstring.

    ``frozen(x, noise_labels, class_labels) -> features`` is the frozen network (build it with
    :meth:`from_model`); ``form`` picks the re-noising of the prediction; ``label_dropout`` replaces class
    labels by the null class, on the online and the frozen network alike; ``mse_weight`` adds
    ``mse_weight * ||v_hat - v||^2`` (our extension; the paper's objective is SP alone, the default 0).
    """

    frozen: nn.Module
    form: Form = "paper"
    label_dropout: float = 0.0
    mse_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.mse_weight < 0:
            raise ValueError(f"mse_weight must be >= 0, got {self.mse_weight}")
        if any(p.requires_grad for p in self.frozen.parameters()):
            raise ValueError("the frozen network has trainable parameters; build it with frozen_middle_block_encoder")

    @classmethod
    def from_model(cls, model: Denoiser, **options) -> SelfPerceptualLoss:
        """The objective whose frozen network is a copy of ``model.net`` as it is now (the pre-trained model)."""
        return cls(frozen_middle_block_encoder(model.net), **options)

    def __call__(
        self, model: Denoiser, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``batch``: ``x0: (B, ...)`` or ``(x0, labels)``; ``t`` and ``t'`` are drawn independently from the
        process's training distribution (uniform over the DDPM steps). Returns what :meth:`loss_at` returns."""
        x0, labels = split_batch(batch)
        sigma = model.process.sample_sigma(x0.shape[0], generator=generator, device=x0.device)
        sigma_prime = model.process.sample_sigma(x0.shape[0], generator=generator, device=x0.device)
        gen_device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0)
        labels = drop_labels(model, labels, self.label_dropout, generator)
        return self.loss_at(model, x0, eps, sigma, sigma_prime, labels)

    def loss_at(
        self,
        model: Denoiser,
        x0: Tensor,
        eps: Tensor,
        sigma: Tensor,
        sigma_prime: Tensor,
        class_labels: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The loss at given draws: ``x0, eps: (B, ...)``, noise levels ``sigma`` (step t) and ``sigma_prime``
        (step t'): ``(B,)``, as the process's EDM sigmas (``inf`` is the zero-SNR step).

        Returns ``loss`` (scalar, with the graph); ``eps_pred`` and ``x0_pred: (B, ...)``, the online model's
        predictions at step t, attached, for a penalty on top (:mod:`diffbook.objectives.iso`,
        :mod:`diffbook.objectives.sadm`); detached ``per_sample`` feature loss, ``v_mse`` (the online model's
        ``||v_hat - v||^2``), ``sigma`` and ``sigma_prime``, all ``(B,)``.
        """
        if getattr(model.process, "prediction", None) != "v":
            raise ValueError("the self-perceptual objective needs a v-prediction model (DDPM(prediction='v'))")
        alpha, s = _vp_coefficients(sigma, x0)
        x_t = alpha * x0 + s * eps
        v_hat, _ = model.raw_vp(x_t, sigma, class_labels)
        x0_hat, eps_hat = x0_eps_from_v(v_hat, x_t, alpha, s)
        alpha_prime, s_prime = _vp_coefficients(sigma_prime, x0)
        predicted, real = renoise_pair(x0, eps, x0_hat, eps_hat, alpha_prime, s_prime, self.form)
        per_sample = self.feature_distance(model, predicted, real, sigma_prime, class_labels)
        v_mse = (v_hat - (alpha * eps - s * x0)).square().flatten(1).mean(dim=1)
        loss = per_sample.mean()
        if self.mse_weight:
            loss = loss + self.mse_weight * v_mse.mean()
        return {
            "loss": loss,
            "eps_pred": eps_hat,
            "x0_pred": x0_hat,
            "per_sample": per_sample.detach(),
            "v_mse": v_mse.detach(),
            "sigma": sigma.detach(),
            "sigma_prime": sigma_prime.detach(),
        }

    def feature_distance(
        self, model: Denoiser, predicted: Tensor, real: Tensor, sigma: Tensor, class_labels: Tensor | None = None
    ) -> Tensor:
        """``mean ||F*(predicted) - F*(real)||^2`` per sample, ``(B,)``; both inputs ``(B, ...)`` VP states at the
        noise levels ``sigma: (B,)``, preconditioned as ``model``'s network input."""
        _, _, c_in, c_noise = vp_scalings(model.process, sigma.to(predicted.dtype))
        c_in, c_noise = append_dims(c_in.to(predicted.dtype), predicted.ndim), c_noise.to(predicted.dtype)
        with torch.no_grad():  # the real branch carries no parameter of the online model
            target = self.frozen(c_in * real, c_noise, class_labels)
        features = self.frozen(c_in * predicted, c_noise, class_labels)
        return (features - target).square().flatten(1).mean(dim=1)


def _vp_coefficients(sigma: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    alpha, s = vp_coefficients(sigma.to(like.dtype))
    return append_dims(alpha, like.ndim), append_dims(s, like.ndim)


@dataclass(frozen=True)
class SelfPerceptualOptions:
    """The ``objective`` section of ``kind: self_perceptual``; the frozen network is the model being trained,
    as it is when the objective is built (its initial weights loaded)."""

    form: str = "paper"
    label_dropout: float = 0.0
    mse_weight: float = 0.0


def build_self_perceptual(options: SelfPerceptualOptions, context: ObjectiveContext) -> SelfPerceptualLoss:
    model = context.require_model("self_perceptual")
    return SelfPerceptualLoss.from_model(
        model, form=options.form, label_dropout=options.label_dropout, mse_weight=options.mse_weight
    )


OBJECTIVES.register("self_perceptual", SelfPerceptualOptions, build_self_perceptual)
