"""Images as 8-bit pixels, the form samples are saved and scored in: quantisation, PNG folders, reference sets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffbook.data.images import load_image_dataset, stack_dataset


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` in [-1, 1] -> ``(B, H, W, C)`` uint8, rounding as EDM's ``generate.py`` does."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def uint8_to_unit(images: Tensor) -> Tensor:
    """``(B, C, H, W)`` uint8 in [0, 255] -> float32 in [-1, 1], the inverse of :func:`to_uint8` up to its rounding."""
    return (images.float() - 127.5) / 127.5


def png_path(out_dir: Path, seed: int) -> Path:
    return out_dir / f"{seed:06d}.png"


def write_pngs(out_dir: Path, seeds: Sequence[int], images: np.ndarray) -> None:
    """``images: (B, H, W, C)`` uint8 -> ``out_dir/{seed:06d}.png``.

    Each file is written under another name and then renamed, so a process stopped mid-write leaves no
    truncated PNG that a resumed run would take for a finished image."""
    for seed, image in zip(seeds, images, strict=True):
        path = png_path(out_dir, seed)
        partial = path.with_suffix(".png.partial")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(partial, format="PNG")
        os.replace(partial, path)


def read_png(out_dir: Path, seed: int) -> np.ndarray:
    """``out_dir/{seed:06d}.png`` as ``(H, W, C)`` uint8, as :func:`write_pngs` was given it."""
    image = np.asarray(Image.open(png_path(out_dir, seed)))
    return image[..., None] if image.ndim == 2 else image


def read_image_folder(folder: str | Path) -> Tensor:
    """The images in ``folder`` as ``(N, C, H, W)`` uint8: its PNGs, or else its ``samples*.npz`` files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"sample directory {str(folder)!r} not found")
    pngs = sorted(folder.glob("*.png"))
    if pngs:
        arrays = [np.asarray(Image.open(path)) for path in pngs]
        images = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    else:
        npz = sorted(folder.glob("samples*.npz"))
        if not npz:
            raise FileNotFoundError(f"no .png images or samples*.npz files in {folder}")
        images = np.concatenate([np.load(path)["arr_0"] for path in npz])  # ADM's layout, as sample writes it
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def load_reference(
    name: str, resolution: int, channels: int, root: str | Path = "data", split: str = "train"
) -> Tensor:
    """An image dataset of the registry as ``(N, C, R, R)`` uint8, quantised exactly as samples are."""
    images, _ = stack_dataset(load_image_dataset(name, root, split, resolution, channels=channels))
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).contiguous()
