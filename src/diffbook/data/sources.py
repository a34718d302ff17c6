"""The ``data`` section of a config: which data a run trains on, by ``data.name``, and the options each takes.

- a toy set (:data:`~diffbook.data.TOY_DATASETS`): ``n`` points drawn with the run's seed;
- an image dataset of the registry (:data:`~diffbook.data.IMAGE_DATASETS`): ``root``, ``split``,
  ``resolution`` and ``flip``;
- ``latents``: a folder written by ``python -m diffbook precompute-latents``, as ``root``;
- ``image_captions``: images with ``.txt`` captions, for text-to-image fine-tuning (:mod:`diffbook.data.captions`).

Each builds with the run's seed, whether the network takes labels, and the network's weights folder, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from diffbook.config.schema import Registry
from diffbook.data.captions import CAPTION_DATA, CaptionData
from diffbook.data.images import IMAGE_DATASETS, load_image_dataset
from diffbook.data.latents import LatentDataset
from diffbook.data.toy2d import TOY_DATASETS, sample_toy

LATENT_DATA = "latents"


@dataclass(frozen=True)
class ToyData:
    """``n`` points of a 2-D toy set, drawn with the run's seed: ``(n, 2)``."""

    name: str
    n: int

    def build(self, seed: int, labelled: bool, weights: str | None = None) -> Tensor:
        return sample_toy(self.name, self.n, seed=seed)


@dataclass(frozen=True)
class ImageData:
    """An image dataset of the registry, items ``(C, R, R)`` in [-1, 1] (with their labels when ``labelled``)."""

    name: str
    root: str = "data"
    split: str = "train"
    resolution: int | None = None
    flip: bool = False

    def build(self, seed: int, labelled: bool, weights: str | None = None) -> Dataset:
        dataset = load_image_dataset(self.name, self.root, self.split, self.resolution, self.flip)
        return dataset if labelled else ImagesOnly(dataset)


@dataclass(frozen=True)
class LatentData:
    """Precomputed VAE latents ``(4, h, w)`` in the folder ``root`` (with their labels when ``labelled``)."""

    name: str
    root: str

    def build(self, seed: int, labelled: bool, weights: str | None = None) -> Dataset:
        latents = LatentDataset(Path(self.root))
        return latents if labelled else ImagesOnly(latents)


class ImagesOnly(Dataset):
    """The images of an ``(image, label)`` dataset, for unconditional models, whose networks refuse labels."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # map-style datasets define __len__

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index][0]


DATA = Registry[ToyData | ImageData | LatentData | CaptionData]("data", key="name")
for _name in TOY_DATASETS:
    DATA.register(_name, ToyData)
for _name in IMAGE_DATASETS:
    DATA.register(_name, ImageData)
DATA.register(LATENT_DATA, LatentData)
DATA.register(CAPTION_DATA, CaptionData)
