"""Seeded sampling to files, reproducible image by image: what ``python -m diffbook sample`` runs.

Image ``k`` is generated from ``torch.Generator().manual_seed(k)`` alone: its initial noise is that generator's
first draw, so image ``k`` is the same whatever the batch it is in, the batch size or the number of processes, up
to floating-point rounding: matrix and convolution kernels may sum in another order for another batch size
(differences of order 1e-6, which can move a pixel by one level of 255). Deterministic samplers (Heun, Euler, DDIM
with ``eta = 0``) run whole batches of stacked per-seed noise. Stochastic ones (DDPM, DDIM with ``eta > 0``, churn)
draw noise at every step from one generator per call, so they run one image at a time, each with its own generator
continued after its initial noise: exact, and as slow as batch size 1.

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``) rank ``r`` takes ``seeds[r::world]`` and writes its images as
``{seed:06d}.png`` into the shared directory, and its arrays to ``samples.npz`` (one process) or
``samples-rank{r}-of-{world}.npz``; the PNGs are the complete set, and :func:`load_samples` reads either.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffbook.config import (
    LATENT_DATA,
    Config,
    Sampler,
    build_model,
    build_sampler,
    load_config,
    num_classes,
    sample_shape,
)
from diffbook.data import load_image_dataset, stack_dataset
from diffbook.diffusion import Denoiser


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


def seed_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    return [torch.Generator(device).manual_seed(seed) for seed in seeds]


def initial_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...]) -> Tensor:
    """Each generator's first draw, stacked: ``(len(generators), *shape)``."""
    return torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])


def generate(
    denoiser: Denoiser,
    sampler: Sampler,
    seeds: Sequence[int],
    shape: tuple[int, ...],
    batch_size: int = 256,
    class_labels: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[list[int], Tensor]]:
    """Yield ``(seeds, samples: (B, *shape))`` batch by batch; image ``k`` depends on seed ``k`` only.

    ``class_labels`` gives image ``k`` the label ``class_labels[k % len(class_labels)]``; None is unconditional.
    """
    batch_size = 1 if sampler.stochastic else batch_size
    for start in range(0, len(seeds), batch_size):
        batch = list(seeds[start : start + batch_size])
        generators = seed_generators(batch, device)
        noise = initial_noise(generators, shape)
        labels = None
        if class_labels is not None:
            labels = torch.tensor([class_labels[seed % len(class_labels)] for seed in batch], device=device)
        # Only a stochastic sampler uses the generator after the noise, and then the batch holds one image.
        yield batch, sampler(denoiser, noise, labels, generators[0]).samples


def preview_fn(cfg: Config, count: int = 64) -> Callable[[Denoiser, int], Tensor] | None:
    """The Trainer's ``sample_fn(model, step) -> (count, C, H, W)``: seeds ``0..count-1``, so that previews at
    different steps show the same noise; None for toy points, which make no image grid."""
    shape = sample_shape(cfg)
    if len(shape) != 3:
        return None
    sampler = build_sampler(cfg)

    def sample(model: Denoiser, step: int) -> Tensor:
        device = next(model.parameters()).device
        return torch.cat([images for _, images in generate(model, sampler, range(count), shape, count, None, device)])

    return sample


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in [-1, 1] -> ``(B, H, W, C)`` uint8, rounding as EDM's ``generate.py`` does."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_pngs(out_dir: Path, seeds: Sequence[int], images: np.ndarray) -> None:
    """``images: (B, H, W, C)`` uint8 -> ``out_dir/{seed:06d}.png``."""
    for seed, image in zip(seeds, images, strict=True):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(out_dir / f"{seed:06d}.png")


def _require_checkpoint(ckpt: str | Path) -> None:
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} not found; a training run writes RUN_DIR/checkpoint.pt")


def load_checkpoint_model(ckpt: str | Path, cfg: Config, use_ema: bool = True) -> Denoiser:
    """The denoiser of a Trainer checkpoint (``{'model', 'ema', 'step'}``), with EMA weights when there are."""
    _require_checkpoint(ckpt)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = build_model(cfg)
    model.load_state_dict(state["ema"] if use_ema and state.get("ema") is not None else state["model"])
    return model.eval()


def run_config(ckpt: str | Path, config: str | Path | None = None) -> Config:
    """The config a checkpoint was trained with: ``config``, or ``config.yaml`` beside the checkpoint."""
    path = Path(config) if config is not None else Path(ckpt).parent / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} not found; pass --config with the run's config.yaml")
    return load_config(path)


def sample_to_dir(
    ckpt: str | Path,
    out_dir: str | Path,
    seeds: Sequence[int],
    batch_size: int = 256,
    config: str | Path | None = None,
    class_labels: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    shard: Shard | None = None,
    vae: str | Path | None = None,
) -> Path:
    """Sample this shard's ``seeds`` from a checkpoint into ``out_dir`` and return its ``.npz`` path.

    Images go to ``{seed:06d}.png`` and, with their seeds, to the npz as ``images: (N, H, W, C)`` uint8;
    2-D toy points go to the npz only, as ``samples: (N, 2)`` float32. A latent model's samples (its config's
    ``data.name`` is ``latents``) are decoded to images by ``vae`` (default: Stable Diffusion's, from the local
    Hugging Face cache; see :func:`diffbook.latents.load_vae`).
    """
    shard = shard or Shard.from_env()
    _require_checkpoint(ckpt)
    cfg = run_config(ckpt, config)
    if class_labels is not None and not num_classes(cfg):
        raise ValueError("--class-labels given, but the model is unconditional (num_classes = 0)")
    model = load_checkpoint_model(ckpt, cfg).to(device)
    decoder = _latent_decoder(cfg, vae, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = sample_shape(cfg)
    my_seeds, chunks = shard.take(seeds), []
    for batch, samples in generate(model, build_sampler(cfg), my_seeds, shape, batch_size, class_labels, device):
        if len(shape) == 3:
            images = to_uint8(samples if decoder is None else decoder(samples))
            write_pngs(out_dir, batch, images)
            chunks.append(images)
        else:
            chunks.append(samples.float().cpu().numpy())
    key = "images" if len(shape) == 3 else "samples"
    npz_path = out_dir / shard.npz_name
    np.savez(npz_path, **{key: np.concatenate(chunks), "seeds": np.asarray(my_seeds, dtype=np.int64)})
    return npz_path


def _latent_decoder(cfg: Config, vae: str | Path | None, device: torch.device | str) -> Callable | None:
    """Latents ``(B, 4, h, w)`` -> images ``(B, 3, 8h, 8w)`` for a latent model's config; None for the others."""
    if cfg["data"]["name"] != LATENT_DATA:
        if vae is not None:
            raise ValueError("a VAE was given, but the model samples pixels, not latents")
        return None
    from diffbook.latents import SD_VAE, decode, load_vae

    autoencoder = load_vae(vae or SD_VAE, device=device)
    return lambda latents: decode(autoencoder, latents)


def load_samples(sample_dir: str | Path) -> Tensor:
    """The images in ``sample_dir`` as ``(N, C, H, W)`` uint8: its PNGs, or else its ``samples*.npz`` files."""
    sample_dir = Path(sample_dir)
    if not sample_dir.is_dir():
        raise FileNotFoundError(f"sample directory {str(sample_dir)!r} not found")
    pngs = sorted(sample_dir.glob("*.png"))
    if pngs:
        arrays = [np.asarray(Image.open(path)) for path in pngs]
        images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    else:
        npz = sorted(sample_dir.glob("samples*.npz"))
        if not npz:
            raise FileNotFoundError(f"no .png images or samples*.npz files in {sample_dir}")
        images = np.concatenate([np.load(path)["images"] for path in npz])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def load_reference(
    name: str, resolution: int, channels: int, root: str | Path = "data", split: str = "train"
) -> Tensor:
    """An image dataset of the registry as ``(N, C, R, R)`` uint8, quantised exactly as samples are."""
    images, _ = stack_dataset(load_image_dataset(name, root, split, resolution, channels=channels))
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).contiguous()
