"""Sampling a checkpoint to files, reproducible image by image: what ``python -m diffbook sample`` runs.

Image ``k`` comes from seed ``k`` alone (:mod:`diffbook.samplers.seeded`), whatever the batch size or the number
of processes. Under ``torchrun`` (``RANK``, ``WORLD_SIZE``) rank ``r`` takes ``seeds[r::world]`` and writes its
images as ``{seed:06d}.png`` into the shared directory, and its arrays to ``samples.npz`` (one process) or
``samples-rank{r}-of-{world}.npz``; the PNGs are the complete set, and
:func:`~diffbook.data.pixels.read_image_folder` reads either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffbook.data.captions import CAPTION_DATA
from diffbook.data.pixels import to_uint8, write_pngs
from diffbook.experiments.experiment import Experiment
from diffbook.runtime.progress import progress_bar
from diffbook.samplers import generate


def parse_int_ranges(text: str, what: str = "seeds") -> list[int]:
    """``"0-3,10"`` -> ``[0, 1, 2, 3, 10]``: comma-separated non-negative integers and inclusive ranges."""
    values: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"bad {what} {text!r}: expected integers and ranges such as '0-49999' or '0,5,7'")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"bad {what} {text!r}: the range {part.strip()!r} runs backwards")
        values.extend(range(first, last + 1))
    if len(set(values)) != len(values):
        raise ValueError(f"bad {what} {text!r}: a value appears twice")
    return values


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` sampling processes, from torchrun's environment."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def take(self, seeds: Sequence[int]) -> list[int]:
        return list(seeds[self.rank :: self.world])

    @property
    def npz_name(self) -> str:
        return "samples.npz" if self.world == 1 else f"samples-rank{self.rank}-of-{self.world}.npz"


def preview_fn(experiment: Experiment, count: int = 64) -> Callable[[nn.Module, int], Tensor | None] | None:
    """The Trainer's ``sample_fn(model, step) -> (count, C, H, W)``: seeds ``0..count-1``, so that previews at
    different steps show the same noise; None for toy points, which make no image grid."""
    shape = experiment.sample_shape
    if len(shape) != 3:
        return None

    def sample(model: nn.Module, step: int) -> Tensor | None:
        device = next(model.parameters()).device
        batches = generate(model, experiment.sampler, range(count), shape, count, None, device)
        return torch.cat([images for _, images in batches])

    return sample


@dataclass(frozen=True)
class SampleRequest:
    """What to sample: ``seeds``, ``batch_size`` images at a time, ``class_labels`` or, for a text-to-image
    model, ``prompts``, cycled by seed (seed ``s`` gets the ``s % K``-th; None: unconditional), on ``device``. A
    latent model's samples are decoded by ``vae`` (default: its weights' VAE, else Stable Diffusion's)."""

    seeds: Sequence[int]
    batch_size: int = 256
    class_labels: Sequence[int] | None = None
    device: str = "cpu"
    vae: str | None = None
    prompts: Sequence[str] | None = None


def sample_to_dir(
    ckpt: str | Path,
    experiment: Experiment,
    out_dir: str | Path,
    request: SampleRequest,
    shard: Shard | None = None,
    progress: bool = True,
) -> Path:
    """Sample this shard's seeds from a checkpoint of ``experiment`` into ``out_dir``; returns the ``.npz`` path.

    Images go to ``{seed:06d}.png`` and to the npz in the layout of ADM's evaluator: ``arr_0: (N, H, W, C)``
    uint8, ``arr_1: (N,)`` their class labels (class-conditional models), and ``seeds: (N,)``. 2-D toy points go
    to the npz only, as ``samples: (N, 2)`` float32. A bar counts the images (on rank 0).
    """
    shard = shard or Shard.from_env()
    if request.class_labels is not None and not experiment.num_classes:
        raise ValueError("--class-labels given, but the model is unconditional (num_classes = 0)")
    conditions: Sequence[int] | Tensor | None = request.class_labels
    null = None
    if request.prompts:
        conditions, null = encode_prompts(experiment, request.prompts, request.device)
    elif experiment.data.name == CAPTION_DATA:
        raise ValueError("a text-to-image model samples from prompts: give --prompt")
    model = experiment.load_checkpoint(ckpt).to(request.device)
    decoder = _latent_decoder(experiment, request.vae, request.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape, my_seeds, chunks = experiment.sample_shape, shard.take(request.seeds), []
    batches = generate(model, experiment.sampler, my_seeds, shape, request.batch_size, conditions, request.device, null)
    bar = progress_bar(desc="sample", enabled=progress and shard.rank == 0, total=len(my_seeds), unit="image")
    for batch, samples in batches:
        bar.update(len(batch))
        if len(shape) == 3:
            images = to_uint8(samples if decoder is None else decoder(samples))
            write_pngs(out_dir, batch, images)
            chunks.append(images)
        else:
            chunks.append(samples.float().cpu().numpy())
    bar.close()
    labels = (
        None
        if request.class_labels is None
        else [request.class_labels[s % len(request.class_labels)] for s in my_seeds]
    )
    return _write_npz(out_dir / shard.npz_name, np.concatenate(chunks), my_seeds, labels)


def _write_npz(path: Path, samples: np.ndarray, seeds: Sequence[int], labels: Sequence[int] | None) -> Path:
    arrays = {"arr_0" if samples.ndim == 4 else "samples": samples, "seeds": np.asarray(seeds, dtype=np.int64)}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as its allow_pickle
    return path


# Labels draw from their own stream of the seed, apart from the noise, which torch draws from the seed itself.
LABEL_STREAM = 1


def labels_by_seed(seeds: Sequence[int], num_classes: int) -> list[int]:
    """Uniform random class labels, drawn from each seed alone, as the releases sample theirs (not cycled), and
    the same whatever the batch size or number of processes. Entry ``s`` is seed ``s``'s label, so the list
    plays the role of ``class_labels`` (seed ``s`` gets entry ``s % len``)."""
    if num_classes < 1:
        raise ValueError("--class-labels random given, but the model is unconditional (num_classes = 0)")
    return [int(np.random.default_rng([seed, LABEL_STREAM]).integers(num_classes)) for seed in range(max(seeds) + 1)]


def _latent_decoder(experiment: Experiment, vae: str | None, device: str) -> Callable[[Tensor], Tensor] | None:
    """Latents ``(B, 4, h, w)`` -> images ``(B, 3, 8h, 8w)`` for a latent model; None for the others."""
    if not experiment.is_latent:
        if vae is not None:
            raise ValueError("a VAE was given, but the model samples pixels, not latents")
        return None
    from diffbook.nets.vae import SD_VAE, decode, load_vae

    weights = experiment.network.weights
    autoencoder = load_vae(vae or (f"{weights}/vae" if weights else SD_VAE), device=device)
    return lambda latents: decode(autoencoder, latents)


@torch.no_grad()
def encode_prompts(experiment: Experiment, prompts: Sequence[str], device: str) -> tuple[Tensor, Tensor]:
    """The text encoder's hidden states of ``prompts``, ``(K, L, D)``, and of the empty prompt, ``(1, L, D)``
    (guidance's unconditional branch), from a text-to-image experiment's weights."""
    if experiment.data.name != CAPTION_DATA:
        raise ValueError("--prompt given, but the model is not text-conditioned (data.name is not image_captions)")
    from diffbook.data.captions import load_tokenizer, tokenize
    from diffbook.objectives.latent_text import load_text_encoder

    text_encoder = load_text_encoder(experiment.network.weights)
    tokenizer = load_tokenizer(f"{experiment.network.weights}/tokenizer")
    text_encoder = text_encoder.to(device)
    texts = text_encoder(tokenize(tokenizer, list(prompts)).to(device))[0]
    return texts, text_encoder(tokenize(tokenizer, [""]).to(device))[0]
