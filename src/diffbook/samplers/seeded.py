"""Seeded sampling, reproducible sample by sample: the one loop behind ``python -m diffbook sample``, the
trainer's previews, sweeps, the comparison suite and the explorers.

Sample ``k`` is drawn from ``torch.Generator(device).manual_seed(k)`` alone: its initial noise is that generator's
first draw, and a stochastic sampler continues the same generator for the noise it adds on the way
(:class:`~diffbook.samplers.common.RowNoise`). So sample ``k`` is the same whatever batch it is in, the batch size
or the number of processes, up to floating-point rounding: matrix and convolution kernels may sum in another
order for another batch size (differences of order 1e-6, which can move a pixel by one level of 255).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from diffbook.samplers.common import DenoiserFn, RowNoise, SamplerOutput
from diffbook.samplers.registry import Sampler


def seed_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per seed, on ``device``."""
    return [torch.Generator(device).manual_seed(seed) for seed in seeds]


def sample_seeds(
    denoiser: DenoiserFn,
    sampler: Sampler,
    seeds: Sequence[int],
    shape: tuple[int, ...],
    class_labels: Sequence[int] | Tensor | None = None,
    device: torch.device | str = "cpu",
    return_trajectory: bool = False,
    process: object = None,
    null_labels: Tensor | None = None,
) -> SamplerOutput:
    """One batch, sample ``i`` from seed ``seeds[i]``: ``samples: (len(seeds), *shape)``.

    ``class_labels`` (``K`` class indices, or ``(K, ...)`` conditions such as prompts' text embeddings) give
    sample ``i`` the row ``seeds[i] % K``; None is unconditional. ``process`` is for DDPM's samplers on a denoiser
    that has none (an analytic one); ``null_labels`` for guidance's unconditional branch (an empty prompt's).
    """
    generators = seed_generators(seeds, device)
    noise = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators]).to(device)
    labels = None
    if class_labels is not None:
        rows = torch.tensor([seed % len(class_labels) for seed in seeds])
        labels = torch.as_tensor(class_labels)[rows].to(device)
    added = RowNoise(generators) if sampler.stochastic else None
    return sampler(denoiser, noise, labels, added, return_trajectory, process, null_labels)


def generate(
    denoiser: DenoiserFn,
    sampler: Sampler,
    seeds: Sequence[int],
    shape: tuple[int, ...],
    batch_size: int = 256,
    class_labels: Sequence[int] | Tensor | None = None,
    device: torch.device | str = "cpu",
    null_labels: Tensor | None = None,
    process: object = None,
) -> Iterator[tuple[list[int], Tensor]]:
    """Yield ``(seeds, samples: (B, *shape))`` batch by batch (:func:`sample_seeds`); ``B <= batch_size``."""
    for start in range(0, len(seeds), batch_size):
        batch = list(seeds[start : start + batch_size])
        out = sample_seeds(denoiser, sampler, batch, shape, class_labels, device, False, process, null_labels)
        yield batch, out.samples


@torch.no_grad()
def sample_count(
    denoiser: DenoiserFn,
    sampler: Sampler,
    count: int,
    shape: tuple[int, ...],
    first_seed: int = 0,
    class_labels: Sequence[int] | Tensor | None = None,
    batch_size: int = 10_000,
) -> Tensor:
    """``count`` samples ``(count, *shape)`` from seeds ``first_seed .. first_seed + count - 1``, concatenated."""
    seeds = range(first_seed, first_seed + count)
    return torch.cat([samples for _, samples in generate(denoiser, sampler, seeds, shape, batch_size, class_labels)])
