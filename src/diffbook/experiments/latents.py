"""Latents computed once: a dataset encoded by the VAE into the folder that
:class:`~diffbook.data.latents.LatentDataset` reads (``python -m diffbook precompute-latents``)."""

from __future__ import annotations

import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from diffbook.data.latents import LABELS_FILE, LATENTS_FILE, META_FILE
from diffbook.nets.vae import SD_LATENT_SCALE, SD_VAE, encode
from diffbook.runtime.progress import progress_bar


def precompute_latents(
    vae: Any,
    dataset: Dataset,
    out_dir: str | Path,
    batch_size: int = 64,
    flip: bool = False,
    seed: int = 0,
    vae_name: str = SD_VAE,
) -> Path:
    """Encode every ``(image, label)`` of ``dataset`` into ``out_dir``; returns ``out_dir``.

    Writes ``latents.npy`` ``(N, 4, h, w)`` float16 (memory-mapped while it is written, so ImageNet need not fit
    in memory), ``labels.npy`` ``(N,)`` int64, and ``meta.json``. With ``flip`` the mirrored images follow as
    items ``N .. 2N-1``, the precomputed form of DiT's random flips. Latents are drawn with ``seed``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(vae.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    n = len(cast(Sized, dataset))
    copies = 2 if flip else 1
    latents, labels = None, np.empty(copies * n, dtype=np.int64)
    start = 0
    for images, targets in progress_bar(loader, desc="encode"):
        for copy in range(copies):
            z = encode(vae, (images.flip(-1) if copy else images).to(device), generator).cpu()
            if latents is None:
                latents = np.lib.format.open_memmap(
                    out_dir / LATENTS_FILE, mode="w+", dtype=np.float16, shape=(copies * n, *z.shape[1:])
                )
            rows = slice(copy * n + start, copy * n + start + len(z))
            latents[rows] = z.to(torch.float16).numpy()
            labels[rows] = targets.numpy()
        start += len(images)
    if latents is None:
        raise ValueError("the dataset to encode is empty")
    latents.flush()
    np.save(out_dir / LABELS_FILE, labels)
    meta = {
        "vae": vae_name,
        "scale": SD_LATENT_SCALE,
        "count": copies * n,
        "shape": list(latents.shape[1:]),
        "flipped_copies": flip,
        "seed": seed,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir
