"""How closely a (bidirectional) consistency model follows the probability-flow ODE of a Gaussian mixture, the one
case where that ODE is known: the mixture's exact denoiser integrated with 200 Heun steps uniform in ln sigma
(:func:`mixture_flow`).

:func:`consistency_scores` measures one model; :func:`edm_baseline` and :func:`ddim_inversion_baseline` measure
an ODE solver on a denoiser (the exact one: the best any trained network could do) on the same draws, and
:func:`exact_references` the exact flow itself, so that all of them sit in one table. Generation is scored by the
unbiased squared MMD with one RBF kernel of bandwidth 0.1, the clusters' width, against a fresh draw of the data;
reconstructions by the mean squared error per coordinate; latents (the noise ``z`` of ``x_T = sigma_max z``) by
their RMS distance per coordinate to the exact ODE latent of the same noised point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffbook.data.toy2d import GaussianMixture
from diffbook.diffusion.consistency import BidirectionalConsistency
from diffbook.diffusion.edm import karras_sigmas
from diffbook.metrics.toy import mmd_rbf
from diffbook.samplers.common import DenoiserFn
from diffbook.samplers.consistency import (
    MULTISTEP_LEVELS,
    SCHEDULES,
    consistency_sample,
    inversion_chain,
    multistep_schedule,
    run_schedule,
)
from diffbook.samplers.edm import edm_sample, ode_flow

MMD_BANDWIDTH = 0.1  # the eight Gaussians' own std: the kernel sees whether samples sit on the modes
INVERSION_START = 0.07  # the authors' first inversion level (samplers.consistency.INVERSIONS)
INVERSION_NFES = (1, 2, 3, 4)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


@dataclass(frozen=True)
class ToyDraws:
    """Everything random in a score, from one seed, so that every model and baseline sees the same points.

    ``reference``: a fresh draw of the data (what samples are compared with); ``data``: the points to invert;
    ``noise``: generation noise; ``inversion_noise``: the ``z`` of ``data + 0.07 z``. Each ``(count, D)``.
    """

    reference: Tensor
    data: Tensor
    noise: Tensor
    inversion_noise: Tensor

    @classmethod
    def draw(cls, mixture: GaussianMixture, count: int, seed: int) -> ToyDraws:
        generator = torch.Generator().manual_seed(seed)
        reference = mixture.sample(count, generator).float()
        data = mixture.sample(count, generator).float()
        noise, inversion_noise = torch.randn(2, count, mixture.dim, generator=generator)
        return cls(reference, data, noise, inversion_noise)

    @property
    def inversion_start(self) -> Tensor:
        """``data + 0.07 z``: the state at level 0.07 every inversion starts from, ``(count, D)``."""
        return self.data + INVERSION_START * self.inversion_noise


def mixture_flow(mixture: GaussianMixture, x: Tensor, t: float, u: float, steps: int = 200) -> Tensor:
    """The exact flow map of ``mixture``'s PF ODE from level ``t`` to ``u``, either way: ``x: (B, D)`` -> ``(B, D)``.

    Heun steps uniform in ``ln sigma`` on the exact denoiser, in float64; returned in ``x``'s dtype.
    """
    return ode_flow(mixture.denoiser, x.double(), t, u, steps).samples.to(x.dtype)


def generation_mmd(samples: Tensor, reference: Tensor) -> float:
    """Unbiased squared MMD with one RBF kernel of bandwidth 0.1; ``samples: (N, D)``, ``reference: (M, D)``."""
    return mmd_rbf(samples, reference, (MMD_BANDWIDTH,))


def relative_flow_error(
    jump: Callable[[Tensor], Tensor], mixture: GaussianMixture, x_t: Tensor, t: float, u: float
) -> float:
    """RMS distance of ``jump(x_t)`` to the exact jump ``t -> u`` of ``x_t: (B, D)``, over the RMS spread of the
    exact ends about their mean: 0 is exact, about 1 is no better than a guess at the right scale."""
    exact = mixture_flow(mixture, x_t, t, u)
    error = (jump(x_t) - exact).square().sum(1).mean().sqrt()
    return float(error / (exact - exact.mean(0)).square().sum(1).mean().sqrt())


def _rms(x: Tensor) -> float:
    return float(x.square().mean().sqrt())


@torch.no_grad()
def consistency_scores(
    model: BidirectionalConsistency, mixture: GaussianMixture, count: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Scores of ``model`` on ``mixture``: generation, inversion and single jumps against the exact ODE.

    - ``mmd_nfe{k}``: samples of :data:`SCHEDULES` ``[k]``; ``mmd_multistep{k}`` (k >= 2): the consistency model's
      own multistep sampler at the same levels (:data:`MULTISTEP_LEVELS`), jumps to ``sigma_min`` only;
    - ``recon_mse_inv{k}``: invert ``data + 0.07 z`` with ``k`` jumps (:func:`inversion_chain`), generate back in
      one; ``latent_rms_inv{k}``: the latent's distance to the exact ODE latent; ``latent_std_inv2``: the spread
      per coordinate of the 2-jump latents (1 for exact latents);
    - ``jump_error_down`` (2 -> 0.002) and ``jump_error_up`` (0.07 -> 2): :func:`relative_flow_error`;
    - ``roundtrip_rms``: ``x_2 = data + 2 z`` jumped to 10 and back, RMS per coordinate of the change.
    """
    draws = ToyDraws.draw(mixture, count, seed)
    scores = {}
    for nfe, schedule in SCHEDULES.items():
        samples = consistency_sample(model, draws.noise, schedule, generator=torch.Generator().manual_seed(seed))
        scores[f"mmd_nfe{nfe}"] = generation_mmd(samples.samples, draws.reference)
    for nfe, levels in MULTISTEP_LEVELS.items():
        if nfe > 1:  # one level is the one-step sampler itself
            schedule = multistep_schedule(levels, SIGMA_MIN)
            samples = consistency_sample(model, draws.noise, schedule, generator=torch.Generator().manual_seed(seed))
            scores[f"mmd_multistep{nfe}"] = generation_mmd(samples.samples, draws.reference)
    start = draws.inversion_start
    exact_latent = mixture_flow(mixture, start, INVERSION_START, SIGMA_MAX) / SIGMA_MAX
    for nfe in INVERSION_NFES:
        latent = run_schedule(model, start, [inversion_chain(nfe)], INVERSION_START).samples / SIGMA_MAX
        back = consistency_sample(model, latent, SCHEDULES[1]).samples
        scores[f"recon_mse_inv{nfe}"] = float((back - draws.data).square().mean())
        scores[f"latent_rms_inv{nfe}"] = _rms(latent - exact_latent)
        if nfe == 2:
            scores["latent_std_inv2"] = float(latent.std(dim=0).mean())
    x_2 = draws.data + 2.0 * draws.noise
    scores["jump_error_down"] = relative_flow_error(lambda x: model(x, 2.0, SIGMA_MIN), mixture, x_2, 2.0, SIGMA_MIN)
    scores["jump_error_up"] = relative_flow_error(lambda x: model(x, INVERSION_START, 2.0), mixture, start, 0.07, 2.0)
    scores["roundtrip_rms"] = _rms(model(model(x_2, 2.0, 10.0), 10.0, 2.0) - x_2)
    return scores


def edm_baseline(
    denoiser: DenoiserFn, mixture: GaussianMixture, steps: Sequence[int], count: int = 2000, seed: int = 0
) -> dict[int, float]:
    """NFE -> generation MMD of EDM's Heun sampler on ``denoiser`` with each number of ``steps`` (Karras levels
    80 ... 0.002, then 0; ``2 N - 1`` evaluations), from the same noise as :func:`consistency_scores`."""
    draws = ToyDraws.draw(mixture, count, seed)
    results = {}
    for n in steps:
        out = edm_sample(denoiser, draws.noise, karras_sigmas(n, SIGMA_MIN, SIGMA_MAX), "heun")
        results[out.nfe] = generation_mmd(out.samples, draws.reference)
    return results


def ddim_inversion_baseline(
    denoiser: DenoiserFn, mixture: GaussianMixture, steps: Sequence[int], count: int = 2000, seed: int = 0
) -> dict[int, dict[str, float]]:
    """Inversion NFE -> ``latent_rms`` and ``recon_mse`` of DDIM inversion: Euler steps of the ODE on ``denoiser``
    from ``data + 0.07 z`` up to 80 (uniform in ``ln sigma``), then as many Euler steps back down to 0.002.

    The same points and measures as :func:`consistency_scores`'s ``latent_rms_inv{k}`` and ``recon_mse_inv{k}``
    (whose way back is one jump; here it is the mirror of the way up).
    """
    draws = ToyDraws.draw(mixture, count, seed)
    start = draws.inversion_start
    exact_latent = mixture_flow(mixture, start, INVERSION_START, SIGMA_MAX) / SIGMA_MAX
    results = {}
    for n in steps:
        top = ode_flow(denoiser, start, INVERSION_START, SIGMA_MAX, n, "euler").samples
        back = ode_flow(denoiser, top, SIGMA_MAX, SIGMA_MIN, n, "euler").samples
        results[n] = {
            "latent_rms": _rms(top / SIGMA_MAX - exact_latent),
            "recon_mse": float((back - draws.data).square().mean()),
        }
    return results


def exact_references(mixture: GaussianMixture, count: int = 2000, seed: int = 0) -> dict[str, float]:
    """The floors of :func:`consistency_scores`' measures, set by the exact flow itself on the same draws.

    ``mmd``: exact ODE samples ``80 z -> 0.002`` (what finite samples score at best); ``recon_mse``: the exact
    trajectory through ``data + 0.07 z`` at 0.002 (the added 0.07 noise is not undone exactly); ``latent_std``: the
    spread per coordinate of exact latents (1 up to the data's own spread over 80).
    """
    draws = ToyDraws.draw(mixture, count, seed)
    samples = mixture_flow(mixture, SIGMA_MAX * draws.noise, SIGMA_MAX, SIGMA_MIN)
    start = draws.inversion_start
    latent = mixture_flow(mixture, start, INVERSION_START, SIGMA_MAX) / SIGMA_MAX
    return {
        "mmd": generation_mmd(samples, draws.reference),
        "recon_mse": float((mixture_flow(mixture, start, INVERSION_START, SIGMA_MIN) - draws.data).square().mean()),
        "latent_std": float(latent.std(dim=0).mean()),
    }
