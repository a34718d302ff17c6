"""SADM (Yang et al., "Structure-Guided Adversarial Training of Diffusion Models", arXiv 2402.17563).

Denoising losses are *instance-level*: each sample's error alone. SADM adds a *batch-level* term: the pairwise
structure of the denoiser's one-step predictions ``x0_hat`` over a minibatch must match that of the real ``x0``,
measured in the feature space of a learned encoder ``h_phi``, the structure discriminator. The encoder is
trained to maximise the structural distance, the denoiser to minimise it (the paper's Fig. 3).

Confirmed (the paper's Fig. 3 and its text): the batch x batch affinity in a learned low-dimensional feature
space; predictions are the denoiser's ``x0_hat`` of the noisy training batch, not sampler outputs; the denoiser
minimises and the encoder maximises; the total is the denoising loss plus the adversarial term. **Our reading**
(book: decisions, S1-S3; the paper's equations were not available, and every item is a knob of :class:`SADMLoss`)::

    S(X)_ij = <h(x_i), h(x_j)>  for i < j   (cosine, h unit-norm; or ||h(x_i) - h(x_j)||: euclidean)
    L_struct = weighted mean_{i<j} |S(x0)_ij - S(x0_hat)_ij|      (l1; or the square: l2)
    encoder:  maximise L_struct on detached x0_hat    denoiser: minimise L_denoise + weight * L_struct

``h`` is Lipschitz-bounded (spectral norm on every layer, 1-Lipschitz activations) and L2-normalised, so the
maximisation is bounded (cosine affinities lie in [-1, 1]). A pair can be gated by the noise levels its two
predictions came from (both ``sigma < gate``) or weighted by their signal fractions ``1 / (1 + sigma^2)``:
at high noise the MMSE prediction tends to the data mean, whose structure no denoiser can keep (book: decisions, S2).

Under several processes the structure is over the global batch: features and noise levels are all-gathered
(:func:`~diffbook.runtime.distributed.all_gather_with_grad`), so a run on ``W`` ranks computes the loss and the
gradients of one process on the same batch. The objective is a two-player objective of the Trainer
(:class:`~diffbook.train.players.TwoPlayerObjective`): ``adversary`` is the encoder, trained by
:meth:`SADMLoss.adversary_loss` with its own optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from diffbook.diffusion.denoiser import Denoiser
from diffbook.objectives.denoising import DenoisingLoss, split_batch
from diffbook.objectives.registry import OBJECTIVES, ObjectiveContext, base_objective
from diffbook.runtime.distributed import all_gather_with_grad

Affinity = Literal["cosine", "euclidean"]
Mismatch = Literal["l1", "l2"]
Weighting = Literal["uniform", "snr"]
AFFINITIES: tuple[str, ...] = ("cosine", "euclidean")
MISMATCHES: tuple[str, ...] = ("l1", "l2")
WEIGHTINGS: tuple[str, ...] = ("uniform", "snr")


def batch_structure(features: Tensor, affinity: Affinity = "cosine") -> Tensor:
    """The affinity matrix ``S: (B, B)`` of ``features: (B, k)``: ``<h_i, h_j>`` (``"cosine"``; the features are
    unit-norm) or ``||h_i - h_j||`` (``"euclidean"``). The structure is its upper triangle, the pairs ``i < j``."""
    gram = features @ features.T
    if affinity == "cosine":
        return gram
    if affinity == "euclidean":
        squared = gram.diagonal()[:, None] + gram.diagonal()[None, :] - 2 * gram
        # The floor gives the norm a finite gradient where two features coincide (the diagonal).
        return (squared.clamp_min(0) + 1e-12).sqrt()
    raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)}, got {affinity!r}")


def pair_weights(sigma: Tensor, gate: float | None = None, weighting: Weighting = "uniform") -> Tensor:
    """The weight ``w_i w_j`` of every pair ``i < j``, as a ``(B, B)`` matrix that is 0 on and below the diagonal,
    from the noise levels ``sigma: (B,)`` of the two predictions: ``w = 1`` (``"uniform"``) or ``1 / (1 + sigma^2)``
    (``"snr"``, the signal fraction, 0 at ``sigma = inf``), and ``w = 0`` where ``sigma >= gate``."""
    if weighting == "uniform":
        w = torch.ones_like(sigma)
    elif weighting == "snr":
        w = 1 / (1 + sigma.square())
    else:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if gate is not None:
        w = w * (sigma < gate)
    return torch.triu(w[:, None] * w[None, :], diagonal=1)


def structural_distance(
    real_features: Tensor,
    predicted_features: Tensor,
    weights: Tensor | None = None,
    affinity: Affinity = "cosine",
    mismatch: Mismatch = "l1",
) -> Tensor:
    """``sum_{i<j} w_ij d(S(real)_ij, S(predicted)_ij) / sum_{i<j} w_ij``: a scalar.

    ``real_features, predicted_features: (B, k)``, row ``i`` of both from sample ``i``; ``weights: (B, B)``, zero
    on and below the diagonal (:func:`pair_weights`), all pairs alike when None. ``d`` is ``|a - b|`` (``"l1"``)
    or ``(a - b)^2`` (``"l2"``). Zero, with its gradient, when no pair has weight.
    """
    if real_features.shape != predicted_features.shape or real_features.ndim != 2:
        raise ValueError(
            "expected two (B, k) feature batches, "
            f"got {tuple(real_features.shape)} and {tuple(predicted_features.shape)}"
        )
    if len(real_features) < 2:
        raise ValueError("a batch structure needs at least two samples")
    gap = batch_structure(real_features, affinity) - batch_structure(predicted_features, affinity)
    if mismatch == "l1":
        per_pair = gap.abs()
    elif mismatch == "l2":
        per_pair = gap.square()
    else:
        raise ValueError(f"mismatch must be one of {', '.join(MISMATCHES)}, got {mismatch!r}")
    if weights is None:
        weights = torch.ones_like(per_pair).triu(diagonal=1)
    return (weights * per_pair).sum() / weights.sum().clamp_min(torch.finfo(weights.dtype).tiny)


class StructureEncoder(nn.Module):
    """``h(x) = normalise(body(x))``: unit-norm features ``(B, k)`` of a Lipschitz-bounded ``body``.

    ``body`` is built of spectrally normalised layers (each of operator norm about 1 once the power iteration
    has settled) and 1-Lipschitz LeakyReLUs. For convolutions the normalised quantity is the norm of the
    reshaped kernel, which bounds the convolution's own norm only up to a constant (Miyato et al. 2018).
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, ...)`` -> ``(B, k)`` with every row of norm 1."""
        return nn.functional.normalize(self.body(x).flatten(1), dim=1)


def point_encoder(dim: int = 2, hidden: int = 128, feature_dim: int = 16, depth: int = 2) -> StructureEncoder:
    """For points ``(B, dim)``: an MLP of ``depth`` hidden layers of width ``hidden``."""
    widths = [dim, *[hidden] * depth]
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths, widths[1:], strict=False):
        layers += [spectral_norm(nn.Linear(width_in, width_out)), nn.LeakyReLU(0.2)]
    return StructureEncoder(nn.Sequential(*layers, spectral_norm(nn.Linear(widths[-1], feature_dim))))


def conv_encoder(in_channels: int, resolution: int, width: int, feature_dim: int, max_width: int) -> StructureEncoder:
    """For images ``(B, C, R, R)``: a 3x3 stem, then stride-2 convolutions down to 4 x 4 (widths doubling from
    ``width`` up to ``max_width``), and a linear map of the flattened 4 x 4 grid to ``feature_dim``."""
    levels = int(math.log2(resolution // 4)) if resolution >= 4 else -1
    if levels < 0 or 4 * 2**levels != resolution:
        raise ValueError(f"the structure encoder needs a resolution of 4 times a power of 2, got {resolution}")
    layers: list[nn.Module] = [spectral_norm(nn.Conv2d(in_channels, width, 3, padding=1)), nn.LeakyReLU(0.2)]
    channels = width
    for _ in range(levels):
        out = min(2 * channels, max_width)
        layers += [spectral_norm(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        channels = out
    layers += [nn.Flatten(), spectral_norm(nn.Linear(channels * 16, feature_dim))]
    return StructureEncoder(nn.Sequential(*layers))


def image_encoder(
    in_channels: int = 3, resolution: int = 32, width: int = 32, feature_dim: int = 64
) -> StructureEncoder:
    """For pixels in [-1, 1]: :func:`conv_encoder` from ``width`` channels, at most ``8 * width``."""
    return conv_encoder(in_channels, resolution, width, feature_dim, max_width=8 * width)


def latent_encoder(
    in_channels: int = 4, resolution: int = 32, width: int = 128, feature_dim: int = 128
) -> StructureEncoder:
    """For VAE latents (4 channels of about unit variance, 32 x 32 for ImageNet 256): a wider stem than for
    pixels, since each latent position summarises an 8 x 8 patch; at most ``4 * width`` channels."""
    return conv_encoder(in_channels, resolution, width, feature_dim, max_width=4 * width)


ENCODERS: dict[str, Callable[..., StructureEncoder]] = {
    "points": point_encoder,
    "images": image_encoder,
    "latents": latent_encoder,
}


def structure_encoder(
    kind: str, sample_shape: tuple[int, ...], width: int | None = None, feature_dim: int | None = None
) -> StructureEncoder:
    """The encoder ``kind`` (a key of :data:`ENCODERS`) for samples of ``sample_shape``: ``(dim,)`` for points,
    ``(C, R, R)`` for images and latents. ``width`` (the hidden width for points, the stem's for images) and
    ``feature_dim`` default to those of the kind's function."""
    if kind not in ENCODERS:
        raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {kind!r}")
    if (kind == "points") != (len(sample_shape) == 1) or len(sample_shape) not in (1, 3):
        raise ValueError(f"the {kind!r} encoder does not take samples of shape {tuple(sample_shape)}")
    given = {"feature_dim": feature_dim, "hidden" if kind == "points" else "width": width}
    sizes: dict[str, int] = {name: size for name, size in given.items() if size is not None}
    if kind == "points":
        return point_encoder(sample_shape[0], **sizes)
    channels, resolution, _ = sample_shape
    return ENCODERS[kind](channels, resolution, **sizes)


@dataclass(kw_only=True)
class SADMSettings:
    """The knobs of the adversarial term, shared by :class:`SADMLoss` and its config section (book: decisions,
    S1-S2): ``weight`` is lambda; ``gate`` and ``weighting`` pick the pairs (:func:`pair_weights`); ``affinity``
    and ``mismatch`` the distance (:func:`structural_distance`); ``adversary_lr`` and ``adversary_steps`` (encoder
    steps per denoiser step) set the encoder's optimiser in the Trainer."""

    weight: float = 0.3
    affinity: Affinity = "cosine"
    mismatch: Mismatch = "l1"
    gate: float | None = None
    weighting: Weighting = "uniform"
    adversary_lr: float = 1e-4
    adversary_steps: int = 1

    def __post_init__(self) -> None:
        choices = {"affinity": AFFINITIES, "mismatch": MISMATCHES, "weighting": WEIGHTINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        checks = [
            (self.weight >= 0, f"weight (lambda) must be >= 0, got {self.weight}"),
            (self.gate is None or self.gate > 0, f"gate must be None or a noise level > 0, got {self.gate}"),
            (self.adversary_lr > 0, f"adversary_lr must be > 0, got {self.adversary_lr}"),
            (self.adversary_steps >= 1, f"adversary_steps must be >= 1, got {self.adversary_steps}"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("; ".join(problems))

    def settings(self) -> dict[str, Any]:
        """The knobs as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(SADMSettings)}


@dataclass(eq=False)
class SADMLoss(SADMSettings):
    """``base + weight * L_struct`` for the denoiser, and ``-L_struct`` for the encoder (the module docstring).

    ``encoder``: the structure discriminator ``h`` (:func:`structure_encoder`); the knobs are
    :class:`SADMSettings`', given by keyword. ``base`` is any objective that returns ``x0_pred`` and ``sigma``: the
    denoising loss by default. ``to_encoder_input`` maps samples to what the encoder sees (identity; a frozen VAE
    decoder puts a latent model's structure in pixel space).
    """

    encoder: nn.Module
    base: Callable[..., dict[str, Tensor]] = field(default_factory=DenoisingLoss)
    to_encoder_input: Callable[[Tensor], Tensor] | None = None

    @property
    def adversary(self) -> nn.Module:
        """The second player, which the Trainer optimises with :meth:`adversary_loss`: the encoder."""
        return self.encoder

    def __call__(
        self, model: Denoiser, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The denoiser's loss. ``batch``: ``x0: (B, ...)`` or ``(x0, labels)``. Returns the base objective's
        entries, with ``loss = base + weight * structure`` and the detached scalars ``denoising`` and
        ``structure``. At ``weight = 0`` the loss is the base loss, bit for bit, and the encoder is not run."""
        out = self.base(model, batch, generator)
        if "x0_pred" not in out:
            raise ValueError(f"the structure loss needs a base objective that returns x0_pred, not {self.base!r}")
        if self.weight == 0:
            return {**out, "denoising": out["loss"].detach()}
        structure = self.structure(split_batch(batch)[0], out["x0_pred"], out["sigma"])
        return {
            **out,
            "loss": out["loss"] + self.weight * structure,
            "denoising": out["loss"].detach(),
            "structure": structure.detach(),
        }

    def adversary_loss(
        self, model: Denoiser, batch: Tensor | tuple, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """The encoder's loss ``-L_struct`` on predictions made without a graph (fresh noise levels and noise);
        ``structure``: ``L_struct``, detached."""
        with torch.no_grad():
            out = self.base(model, batch, generator)
        structure = self.structure(split_batch(batch)[0], out["x0_pred"].detach(), out["sigma"])
        return {"loss": -structure, "structure": structure.detach()}

    def structure(self, x0: Tensor, x0_pred: Tensor, sigma: Tensor) -> Tensor:
        """``L_struct`` over the global batch: this rank's ``x0, x0_pred: (B, ...)`` and ``sigma: (B,)``, with
        the other ranks' gathered."""
        features = self.encoder(self._encoder_input(torch.cat([x0, x0_pred])))
        real, predicted = (all_gather_with_grad(part) for part in features.chunk(2))
        sigma = all_gather_with_grad(sigma.detach())
        weights = pair_weights(sigma, self.gate, self.weighting)
        return structural_distance(real, predicted, weights, self.affinity, self.mismatch)

    def _encoder_input(self, x: Tensor) -> Tensor:
        return x if self.to_encoder_input is None else self.to_encoder_input(x)


SADM_INPUT_SPACES = ("data", "pixels")


@dataclass
class SADMOptions(SADMSettings):
    """The ``objective`` section of ``kind: sadm``: :class:`SADMSettings`, the structure encoder, and the space
    the encoder sees. ``encoder`` defaults to points for points and images for images (the latent encoder for
    latents); ``input_space: pixels`` decodes a latent model's samples with the frozen VAE ``vae`` first."""

    encoder: str | None = None
    encoder_width: int | None = None
    feature_dim: int | None = None
    input_space: str = "data"
    vae: str | None = None
    base: str | dict = "denoising"
    label_dropout: float = 0.0


def build_sadm(options: SADMOptions, context: ObjectiveContext) -> SADMLoss:
    base = base_objective(options.base, options.label_dropout, context, "objective.base")
    if options.input_space not in SADM_INPUT_SPACES:
        raise ValueError(
            f"objective.input_space must be one of {', '.join(SADM_INPUT_SPACES)}, got {options.input_space!r}"
        )
    shape, to_encoder_input = context.sample_shape, None
    if options.input_space == "pixels":
        from diffbook.nets.vae import SD_VAE, VAEDecoder, load_vae  # diffusers, only for this route

        to_encoder_input = VAEDecoder(load_vae(options.vae or SD_VAE))
        shape = (3, *(8 * size for size in shape[1:]))
    kind = options.encoder or ("points" if len(shape) == 1 else "images")
    encoder = structure_encoder(kind, shape, options.encoder_width, options.feature_dim)
    return SADMLoss(encoder=encoder, base=base, to_encoder_input=to_encoder_input, **options.settings())


OBJECTIVES.register("sadm", SADMOptions, build_sadm)
