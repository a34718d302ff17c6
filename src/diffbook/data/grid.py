"""Image grids: a batch of images tiled into one array, and saved as one PNG (a run's sample grids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Tile ``images: (N, C, H, W)`` in [-1, 1] into one ``(rows*H, nrow*W, C)`` array in [0, 1] (C = 1 or 3)."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    n, c, h, w = pixels.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.ones((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), dtype=np.float32)
    for k, image in enumerate(pixels):
        top, left = padding + (k // nrow) * (h + padding), padding + (k % nrow) * (w + padding)
        grid[top : top + h, left : left + w] = image.transpose(1, 2, 0)
    return grid


def save_image_grid(images: Tensor, path: str | Path) -> None:
    """Save ``images: (N, C, H, W)`` in [-1, 1], C = 1 or 3, as one PNG grid."""
    pixels = (image_grid(images) * 255).round().astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)
