"""Bidirectional consistency training (BCT; Li & He 2024), built on improved consistency training (iCT; Song &
Dhariwal 2023).

Noise levels live on a Karras grid ``sigma_0 = sigma_min < ... < sigma_{N-1} = sigma_max`` (``rho = 7``;
:func:`~diffbook.diffusion.edm.karras_grid`) whose size ``N`` doubles along training (:func:`curriculum`). Each
step, per sample, with one ``z ~ N(0, I)``::

    i ~ p (lognormal over grid intervals);  t = sigma_{i+1},  t' = sigma_i
    target = f_sg(x_0 + t' z, t', sigma_min)                       no gradient at all
    L_CT   = d(f(x_0 + t z, t, sigma_min), target) / (t - t')
    j ~ p without j = i + 1;  u = sigma_j                           u < t and u > t both occur
    L_BCM  = d(f_sg(f(x_0 + t z, t, u), u, sigma_min), target) / |t - u|
    loss   = mean(L_CT + L_BCM)

``f_sg`` is the network with its weights detached (iCT's target network, an EMA of rate 0): in ``L_BCM`` the
gradient reaches the weights through the jump ``f(x_t, t, u)`` only. ``d`` is iCT's pseudo-Huber distance
divided by ``sqrt(dim)`` as in the authors' code, with ``c = 0.00054 sqrt(dim)``: a loss whose scale depends on
neither the batch nor the data's dimension. All four network calls use the same dropout masks. With
``bidirectional=False`` the objective is iCT alone (a consistency model, ``u = sigma_min`` only).

The curriculum needs the training step: the objective counts its own calls in training mode (``step``), and
saves and restores that count through ``state_dict`` / ``load_state_dict``, which the Trainer checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import functional_call

from diffbook.diffusion.consistency import BidirectionalConsistency
from diffbook.diffusion.edm import karras_grid
from diffbook.diffusion.parametrization import append_dims
from diffbook.objectives.denoising import split_batch
from diffbook.objectives.registry import OBJECTIVES

HUBER_SCALE = 0.00054  # iCT: c = 0.00054 sqrt(dim), 0.03 for CIFAR-10


def curriculum(step: int, s0: int, s1: int, total_steps: int) -> int:
    """iCT's ``N(k) = min(s1, s0 2^floor(k / K')) + 1`` with ``K' = floor(K / (log2(s1 / s0) + 1))``.

    ``s0 = 10, s1 = 1280, K = 800k``: N = 11, 21, ..., 1281, doubling every 100k steps. ``s0 = s1`` fixes N.
    Runs shorter than the number of doublings (a smoke test) double every step.
    """
    stage_steps = max(1, math.floor(total_steps / (math.log2(s1 / s0) + 1)))
    return min(s1, s0 * 2 ** (step // stage_steps)) + 1


def index_probabilities(sigmas: Tensor, P_mean: float, P_std: float) -> Tensor:
    """``p_i ∝ Phi((ln sigma_{i+1} - P_mean) / P_std) - Phi((ln sigma_i - P_mean) / P_std)``: (N-1,), sums to 1.

    The lognormal mass of each grid interval; index ``i`` trains the pair ``(sigma_{i+1}, sigma_i)``.
    """
    cdf = torch.special.ndtr((sigmas.log() - P_mean) / P_std)
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """``sqrt(||a - b||^2 + c^2) - c`` per example: ``a, b: (B, ...)`` -> (B,). Like L2 far away, L2^2 near."""
    return ((a - b).flatten(1).square().sum(dim=1) + c**2).sqrt() - c


def draw_u_indices(i: Tensor, p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each CT index ``i: (B,)``, a ``j ~ p`` conditioned on ``j != i + 1`` (so ``u = sigma_j != t``): (B,).

    One ``torch.multinomial`` over a ``(B, N-1)`` matrix of ``p`` with the column ``i + 1`` of each row zeroed;
    it renormalises each row itself.
    """
    columns = torch.arange(p.shape[0], device=p.device)
    weights = p.expand(i.shape[0], -1) * (columns[None, :] != (i + 1)[:, None])
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


@contextmanager
def same_dropout(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with the global generators seeded by ``seed``, then restore them as they were.

    Entering it before each network call of one step gives every call the same dropout masks.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # Only the generators that draw the masks: torch.manual_seed would also queue a seeding of every lazily
        # initialised CUDA device, recording a stack trace each time (5 ms a call on a CPU, and a growing queue).
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


@dataclass
class BCMLoss:
    """iCT (``bidirectional=False``) or BCT (``True``) for a :class:`BidirectionalConsistency` model.

    ``s0, s1, total_steps``: the curriculum (:func:`curriculum`); ``s0 = s1 = 320`` is the authors' fixed
    ``N = 321`` for fine-tuning. ``P_mean, P_std``: the lognormal over grid intervals. ``exclude_sigma_max``
    never trains ``t = sigma_max`` (``p_{N-2} = 0``, the authors' BCM fine-tune). ``huber_c``: the pseudo-Huber
    ``c``; None is ``0.00054 sqrt(dim)``. ``step`` counts the calls made in training mode.
    """

    bidirectional: bool = True
    s0: int = 10
    s1: int = 1280
    total_steps: int = 800_000
    rho: float = 7.0
    P_mean: float = -1.1
    P_std: float = 2.0
    exclude_sigma_max: bool = False
    huber_c: float | None = None
    step: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.s0 <= self.s1:
            raise ValueError(f"need 1 <= s0 <= s1, got s0={self.s0}, s1={self.s1}")
        if self.exclude_sigma_max and self.s0 < 2:
            raise ValueError("exclude_sigma_max needs s0 >= 2: with one interval there is nothing else to train")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if self.P_std <= 0:
            raise ValueError(f"P_std must be positive, got {self.P_std}")
        if self.huber_c is not None and self.huber_c <= 0:
            raise ValueError(f"huber_c must be positive (or None for 0.00054 sqrt(dim)), got {self.huber_c}")

    @property
    def num_scales(self) -> int:
        """The grid size ``N`` at the current step."""
        return curriculum(self.step, self.s0, self.s1, self.total_steps)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])

    def probabilities(self, sigmas: Tensor) -> tuple[Tensor, Tensor]:
        """``(p_t, p_u)`` over the ``N - 1`` grid indices: for the CT pair, and for the end ``u`` of the jump.

        They differ only with ``exclude_sigma_max``, which zeroes ``p_t[N-2]``; ``u`` never reaches
        ``sigma_{N-1}`` either way, as in the authors' code.
        """
        p_u = index_probabilities(sigmas, self.P_mean, self.P_std)
        p_t = p_u.clone()
        if self.exclude_sigma_max:
            p_t[-1] = 0
        return p_t, p_u

    def __call__(
        self, model: BidirectionalConsistency, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``batch``: ``x0: (B, ...)`` or ``(x0, labels: (B,))``. Returns ``loss`` (scalar) and, detached, the
        per-sample terms ``ct`` and ``bcm`` and the levels ``sigma`` (t) and ``u``, each ``(B,)``."""
        x0, labels = split_batch(batch)
        process = model.process
        draw_device = generator.device if generator is not None else torch.device("cpu")
        sigmas = karras_grid(self.num_scales, process.sigma_min, process.sigma_max, self.rho).to(draw_device)
        p_t, p_u = self.probabilities(sigmas)
        i = torch.multinomial(p_t, x0.shape[0], replacement=True, generator=generator)
        u = sigmas[draw_u_indices(i, p_u, generator)] if self.bidirectional else None
        noise = torch.randn(x0.shape, generator=generator, device=draw_device).to(x0)
        dropout_seed = int(torch.randint(2**62, (), generator=generator, device=draw_device))
        out = self.terms(
            model,
            x0,
            noise,
            sigmas[i + 1].to(x0),
            sigmas[i].to(x0),
            u.to(x0) if u is not None else None,
            labels,
            dropout_seed,
        )
        if model.training:
            self.step += 1
        return out

    def terms(
        self,
        model: BidirectionalConsistency,
        x0: Tensor,
        noise: Tensor,
        t: Tensor,
        t_prev: Tensor,
        u: Tensor | None = None,
        class_labels: Tensor | None = None,
        dropout_seed: int = 0,
    ) -> dict[str, Tensor]:
        """The loss for given draws: ``x0, noise: (B, ...)``; ``t > t_prev`` and ``u != t``, each ``(B,)``.

        ``u = None`` leaves out the bidirectional term. Returns ``loss`` and the detached ``ct``, ``bcm``
        (zeros without ``u``), ``sigma`` (= t) and ``u`` (``sigma_min`` without it).
        """
        sigma_min = model.process.sigma_min
        dim = x0[0].numel()
        c = self.huber_c if self.huber_c is not None else HUBER_SCALE * math.sqrt(dim)

        def distance(a: Tensor, b: Tensor) -> Tensor:
            return pseudo_huber(a, b, c) / math.sqrt(dim)

        def call(fn, x: Tensor, start: Tensor | float, end: Tensor | float) -> Tensor:
            with same_dropout(dropout_seed, x.device):
                return fn(x, start, end, class_labels)

        x_t = x0 + append_dims(t, x0.ndim) * noise
        with torch.no_grad():
            target = call(model, x0 + append_dims(t_prev, x0.ndim) * noise, t_prev, sigma_min)
        ct = distance(call(model, x_t, t, sigma_min), target) / (t - t_prev)
        bcm = torch.zeros_like(ct)
        if u is not None:
            frozen = {name: p.detach() for name, p in model.named_parameters()}

            def target_network(x: Tensor, start: Tensor, end: float, labels: Tensor | None) -> Tensor:
                return functional_call(model, frozen, (x, start, end, labels))

            jumped = call(model, x_t, t, u)
            bcm = distance(call(target_network, jumped, u, sigma_min), target) / (t - u).abs()
        return {
            "loss": (ct + bcm).mean(),
            "ct": ct.detach(),
            "bcm": bcm.detach(),
            "sigma": t.detach(),
            "u": u.detach() if u is not None else torch.full_like(t, sigma_min),
        }


OBJECTIVES.register("bcm", BCMLoss)
