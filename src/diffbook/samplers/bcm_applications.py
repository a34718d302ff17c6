"""What a bidirectional consistency model does besides generating: interpolation between real images, inpainting
and blind restoration, each a few jumps of ``f(x, t, u)`` (Li & He 2024, Sec. 5).

The paper shows these uses without fixing every detail of its procedures; the ones here are ours, built from the
samplers of :mod:`diffbook.samplers.consistency`:

- interpolation: invert both images, interpolate the latents spherically, generate from each mixture;
- inpainting: fill the hole with Gaussian noise, then round after round invert the image to a noise level
  (lower each round), generate back and re-impose the known pixels;
- blind restoration: invert the degraded image part of the way up and generate back. Inversion carries the image
  along the ODE of the *clean* data, so detail that is not on that data's manifold (JPEG blocks) is not
  carried back down. The model is never told what the degradation was.

Every function returns a :class:`~diffbook.samplers.SamplerOutput` whose ``nfe`` counts network calls in
sequence (a batch is one call). Images are ``(B, C, H, W)`` in [-1, 1]; 2-D points work alike.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffbook.diffusion.consistency import BidirectionalConsistency
from diffbook.samplers.common import SamplerOutput, randn_like
from diffbook.samplers.consistency import (
    INVERSIONS,
    SCHEDULES,
    Chain,
    Schedule,
    consistency_sample,
    invert,
    run_schedule,
)


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation of ``a, b: (B, ...)`` per example: ``a`` at 0, ``b`` at 1, and in between a path
    whose norm stays that of Gaussian noise (a straight line would shrink it by up to ``1/sqrt(2)``)."""
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    cos = torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=1).clamp(-1, 1)
    angle = torch.arccos(cos)[:, None]
    sin = torch.sin(angle)
    # Where the two are (nearly) parallel the sines vanish; the straight line is then the same path.
    safe = sin.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - weight) * angle) / sin.where(safe, 1), 1 - weight)
    wb = torch.where(safe, torch.sin(weight * angle) / sin.where(safe, 1), weight)
    return (wa * flat_a + wb * flat_b).reshape(a.shape)


@torch.no_grad()
def interpolate(
    model: BidirectionalConsistency,
    x_a: Tensor,
    x_b: Tensor,
    weights: Sequence[float],
    inversion: Chain = INVERSIONS[2],
    schedule: Schedule = SCHEDULES[1],
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SamplerOutput:
    """Images between ``x_a`` and ``x_b``, both ``(B, ...)``: ``samples[k]: (B, ...)`` at ``weights[k]``.

    Both are inverted (in one batch) through ``inversion``; each slerp of their latents is generated with
    ``schedule``, which must start where the inversion ends. Weights 0 and 1 give the reconstructions of ``x_a``
    and ``x_b``. Samples ``(K, B, ...)``; NFE = inversion jumps + schedule jumps.
    """
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have one shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    if schedule[0][0] != inversion[-1]:
        raise ValueError(f"the schedule starts at {schedule[0][0]}, not where the inversion ends ({inversion[-1]})")
    labels = torch.cat([class_labels, class_labels]) if class_labels is not None else None
    latents = invert(model, torch.cat([x_a, x_b]), inversion, labels, generator)
    z_a, z_b = latents.samples.chunk(2)
    mixed = torch.stack([slerp(z_a, z_b, w) for w in weights])  # (K, B, ...)
    K, B = mixed.shape[:2]
    labels = class_labels.repeat(K) if class_labels is not None else None
    out = consistency_sample(model, mixed.flatten(0, 1), schedule, labels, generator)
    return SamplerOutput(out.samples.reshape(mixed.shape), latents.nfe + out.nfe)


@torch.no_grad()
def inpaint(
    model: BidirectionalConsistency,
    images: Tensor,
    mask: Tensor,
    levels: Sequence[float] = (80.0, 10.0, 2.0, 0.5),
    start_level: float = 0.07,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SamplerOutput:
    """Fill the pixels of ``images: (B, ...)`` where ``mask`` (broadcastable, 1 = known) is 0.

    The hole starts as standard normal noise. Each round takes the current image, adds ``start_level`` noise,
    jumps up to ``levels[r]`` (an inversion), jumps down to ``sigma_min`` and puts the known pixels back: 2 NFE a
    round. Decreasing levels go from rearranging the whole image to harmonising details. The known pixels of
    the result are exactly the input's.
    """
    if not levels:
        raise ValueError("inpainting needs at least one level")
    mask = mask.to(images)
    x = mask * images + (1 - mask) * randn_like(images, generator)
    sigma_min, nfe = model.process.sigma_min, 0
    for level in levels:
        out = run_schedule(model, x, [(start_level, level, sigma_min)], 0.0, class_labels, generator)
        x, nfe = mask * images + (1 - mask) * out.samples, nfe + out.nfe
    return SamplerOutput(x, nfe)


@torch.no_grad()
def restore(
    model: BidirectionalConsistency,
    images: Tensor,
    inversion: Chain = (0.07, 1.0),
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SamplerOutput:
    """Blind restoration of degraded ``images: (B, ...)``: invert through ``inversion`` (adding
    ``inversion[0]`` noise first), then jump down to ``sigma_min``. NFE = ``len(inversion)``.

    The top level trades fidelity for cleaning: the higher, the more of the degradation is removed and the more
    the content may drift. The default suits 16x16 digits; it is ours, not the paper's.
    """
    chain = (*inversion, model.process.sigma_min)
    return run_schedule(model, images, [chain], 0.0, class_labels, generator)


def jpeg_compress(images: Tensor, quality: int = 20) -> Tensor:
    """JPEG-encode and decode ``images: (B, C, H, W)`` in [-1, 1], ``C`` 1 or 3: the degradation to restore.

    Quality 20 is the authors' ImageNet-64 setting (``BCM/cm/image_datasets.py``). Returns the same shape, on
    the input's device and dtype, quantised to 8 bits as JPEG stores it.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    pixels = ((images.detach().cpu().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    decoded = [_jpeg_round_trip(image.permute(1, 2, 0).squeeze(2).numpy(), quality) for image in pixels]
    stacked = torch.from_numpy(np.stack(decoded)).reshape(pixels.shape[0], *pixels.shape[2:], -1)
    return (stacked.permute(0, 3, 1, 2).float() / 127.5 - 1).to(images)


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 -> the same after a JPEG encode and decode at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))
