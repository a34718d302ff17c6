"""Precomputed VAE latents as a training set (written by :func:`diffbook.experiments.latents.precompute_latents`).

A latent folder holds ``latents.npy`` ``(N, C, h, w)`` float16, ``labels.npy`` ``(N,)`` int64 and ``meta.json``
(the VAE, its scale, and whether mirrored copies were encoded). The array is memory-mapped: ImageNet's 1.28 M
latents at 32 x 32 x 4 are 10 GB, read from disk by the data loader's workers as a batch needs them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

LATENTS_FILE, LABELS_FILE, META_FILE = "latents.npy", "labels.npy", "meta.json"


class LatentDataset(Dataset):
    """Items ``(latent: (C, h, w) float32, label: int)`` of a latent folder ``root``.

    Raises FileNotFoundError naming the command that writes the folder when it is not there.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        missing = [name for name in (LATENTS_FILE, LABELS_FILE, META_FILE) if not (self.root / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"no precomputed latents in {str(self.root)!r} (missing {', '.join(missing)}): write them with "
                f"python -m diffbook precompute-latents --root <image folder> --out {self.root}"
            )
        self.meta = json.loads((self.root / META_FILE).read_text())
        self.latents = np.load(self.root / LATENTS_FILE, mmap_mode="r")
        self.labels = np.load(self.root / LABELS_FILE)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.from_numpy(np.array(self.latents[index], dtype=np.float32)), int(self.labels[index])
