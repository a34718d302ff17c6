"""ADM's hybrid objective (Nichol & Dhariwal 2021, §3.1), as DiT and the latent DiffiT train: the simple loss on
the prediction plus the variational bound's term on the learned variance.

``L = L_simple + (T / 1000) L_vlb(t)`` per sample, with ``t`` uniform on the ``T`` steps:

- ``L_simple``: the denoising MSE in the network's space (``||eps - eps_hat||^2`` for eps-prediction);
- ``L_vlb(t)``: ``KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` in bits per dimension for ``t > 0``, and the
  discretised-Gaussian negative log-likelihood of ``x_0`` (256 bins on [-1, 1]) at ``t = 0``. The mean of ``p``
  comes from a stop-gradient copy of the prediction, so this term trains only the variance channels ``v``,
  whose log-variance interpolates ``log beta~_t`` and ``log beta_t`` (see
  :func:`~diffbook.samplers.ddpm.ancestral_variance`). ``T / 1000`` is ADM's "rescaled MSE" weighting.

The network must be built with ``learn_sigma`` and wrapped by a discrete :class:`~diffbook.diffusion.DDPM`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffbook.diffusion.ddpm import DDPM
from diffbook.diffusion.denoiser import Denoiser
from diffbook.diffusion.parametrization import append_dims, vp_coefficients
from diffbook.objectives.denoising import drop_labels, split_batch
from diffbook.objectives.registry import OBJECTIVES


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """``KL(N(mean1, e^log_var1) || N(mean2, e^log_var2))`` per element, in nats; arguments broadcast."""
    return 0.5 * (-1 + log_var2 - log_var1 + (log_var1 - log_var2).exp() + (mean1 - mean2).square() * (-log_var2).exp())


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log P(x)`` per element for ``x`` in [-1, 1] on 256 levels under ``N(mean, e^log_var)`` binned to them
    (the edge bins take the tails); nats. ADM's with the exact normal CDF in place of its tanh approximation."""
    inv_std = (-0.5 * log_var).exp()
    cdf_plus = torch.special.ndtr(inv_std * (x - mean + 1 / 255))
    cdf_minus = torch.special.ndtr(inv_std * (x - mean - 1 / 255))
    tiny = 1e-12
    return torch.where(
        x < -0.999,
        cdf_plus.clamp(min=tiny).log(),
        torch.where(x > 0.999, (1 - cdf_minus).clamp(min=tiny).log(), (cdf_plus - cdf_minus).clamp(min=tiny).log()),
    )


def variance_bound_term(process: DDPM, t: Tensor, x0: Tensor, x_t: Tensor, x0_hat: Tensor, v: Tensor) -> Tensor:
    """ADM's ``L_vlb(t)`` per sample, in bits per dimension: ``(B,)``.

    ``t: (B,)`` int64 steps; ``x0, x_t, x0_hat, v: (B, ...)``, with ``x_t`` the VP state and ``x0_hat`` the
    (detached) clean estimate that sets the model's posterior mean. The log-variances are ADM's: the posterior
    variance at ``t = 0`` (which is 0) is replaced by the one at ``t = 1``, for ``beta~`` and, at ``t = 0``, ``beta``.
    """
    cpu_t = t.cpu()
    alpha_bar = process.alpha_bar
    alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    posterior_var = process.betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    posterior_var = torch.cat([posterior_var[1:2], posterior_var[1:]])  # ADM's clipping of the t = 0 entry
    max_var = torch.cat([posterior_var[1:2], process.betas[1:]])

    def at_t(table: Tensor) -> Tensor:
        return append_dims(table[cpu_t].to(device=x0.device, dtype=x0.dtype), x0.ndim)

    beta, ab, ab_prev = at_t(process.betas), at_t(alpha_bar), at_t(alpha_bar_prev)
    coef_x0 = beta * ab_prev.sqrt() / (1 - ab)
    coef_xt = (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
    true_mean, model_mean = coef_x0 * x0 + coef_xt * x_t, coef_x0 * x0_hat + coef_xt * x_t
    min_log, max_log = at_t(posterior_var.log()), at_t(max_var.log())
    frac = (v + 1) / 2
    model_log_var = frac * max_log + (1 - frac) * min_log
    kl = normal_kl(true_mean, min_log, model_mean, model_log_var).flatten(1).mean(1)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, model_log_var).flatten(1).mean(1)
    return torch.where(t == 0, nll, kl) / math.log(2)


@dataclass
class HybridLoss:
    """``L_simple + (T / 1000) L_vlb`` for a ``learn_sigma`` network under a DDPM process (module docstring).

    ``label_dropout`` replaces class labels by the null class with that probability (classifier-free guidance).
    """

    label_dropout: float = 0.0

    def __call__(
        self, model: Denoiser, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``batch``: ``x0: (B, ...)`` or ``(x0, labels: (B,))``. Returns ``loss`` (scalar) and, detached,
        ``mse``, ``vb`` (bits per dim) and ``sigma``, each ``(B,)``; ``x0_pred: (B, ...)``, the clean estimate
        with its graph, for a penalty on top (:mod:`diffbook.objectives.sadm`)."""
        process = model.process
        if not isinstance(process, DDPM) or not getattr(model.net, "learn_sigma", False):
            raise ValueError("the hybrid loss needs a DDPM process and a network built with learn_sigma=True")
        x0, labels = split_batch(batch)
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, process.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
        sigma = process.sigmas[t.cpu()].to(device=x0.device, dtype=torch.float32)
        noise = torch.randn(x0.shape, generator=generator, device=device).to(x0)
        alpha, s = (append_dims(c.to(x0.dtype), x0.ndim) for c in vp_coefficients(sigma))
        x = alpha * x0 + s * noise
        labels = drop_labels(model, labels, self.label_dropout, generator)
        out, v, (c_skip, c_out, _, _) = model.raw_vp_variance(x, sigma, labels)
        if v is None:
            raise ValueError("the hybrid loss trains a learned variance: the network needs learn_sigma=True")
        mse = (out - (x0 - c_skip * x) / c_out).square().flatten(1).mean(1)
        x0_pred = c_skip * x + c_out * out
        vb = variance_bound_term(process, t, x0, x, x0_pred.detach(), v)  # the bound trains the variance only
        return {
            "loss": (mse + vb * process.T / 1000).mean(),
            "x0_pred": x0_pred,
            "mse": mse.detach(),
            "vb": vb.detach(),
            "sigma": sigma.detach(),
        }


OBJECTIVES.register("hybrid", HybridLoss)
