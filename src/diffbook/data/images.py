"""Image datasets behind one registry and one transform.

Every dataset yields ``(image, label)``: ``image: (C, R, R)`` float32 in [-1, 1] and ``label`` an int (always 0
for unlabelled sets). Files are looked for under ``root`` exactly where torchvision looks for them. Nothing is
downloaded unless ``download=True``; a missing dataset raises :class:`DatasetNotFoundError`, which says where
the files go and where to get them, the two things needed to set up an offline cluster by hand.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not under ``root`` and ``download=True`` was not asked for (or is impossible)."""


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

# Held out from scikit-learn's digits for the "val" split; the order of the file is kept, so it never changes.
_DIGITS_VAL_EVERY = 6


def _load_digits(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8), in [0, 1]
    labels = torch.from_numpy(digits.target)
    held_out = torch.arange(len(labels)) % _DIGITS_VAL_EVERY == 0
    keep = {"train": torch.ones_like(held_out), "fit": ~held_out, "val": held_out}[split]
    return _TensorImages(images[keep], labels[keep], transform)


def _load_mnist(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.MNIST(root, train=split == "train", transform=transform, download=download)


def _load_fashion_mnist(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.FashionMNIST(root, train=split == "train", transform=transform, download=download)


def _load_cifar10(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    # torchvision holds the split in memory as (N, 32, 32, 3) uint8 and makes a PIL image of each item; the
    # transform reads the uint8 array directly, in less time per image (benchmarks/RESULTS.md).
    cifar = datasets.CIFAR10(root, train=split == "train", download=download)
    return _TensorImages(torch.from_numpy(cifar.data).permute(0, 3, 1, 2), torch.tensor(cifar.targets), transform)


def _load_flowers102(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.Flowers102(root, split=split, transform=transform, download=download)


def _load_oxford_pets(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    pets_split = {"train": "trainval", "test": "test"}[split]
    return datasets.OxfordIIITPet(root, split=pets_split, transform=transform, download=download)


def _load_celeba(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return _Unlabelled(datasets.CelebA(root, split=split, target_type=[], transform=transform, download=download))


def _load_image_folder(root: Path, split: str, transform: ImageTransform, download: bool) -> Dataset:
    return datasets.ImageFolder(root, transform=transform)


@dataclass(frozen=True)
class ImageDatasetSpec:
    """What the registry knows about one dataset.

    ``resolution`` is the native side length (None where sizes vary); ``num_classes`` is None where it is not
    fixed (``imagefolder``: one class per subfolder) or the set is unlabelled (labels are then 0). ``required``
    lists the paths under ``root`` that torchvision needs before it will load; ``source`` says where to get
    them and how to lay them out. ``partition`` names the splits that hold every image exactly once, which
    ``split="all"`` concatenates (empty where the splits overlap, as digits' do).
    """

    title: str
    channels: int
    resolution: int | None
    default_resolution: int
    num_classes: int | None
    splits: tuple[str, ...]
    required: tuple[str, ...]
    source: str
    loader: Loader
    downloadable: bool = True
    classes: tuple[str, ...] | None = None
    partition: tuple[str, ...] = ()


_DIGITS = tuple(str(d) for d in range(10))
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CELEBA_FILES = (
    "list_attr_celeba.txt",
    "identity_CelebA.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "list_eval_partition.txt",
)
_GUNZIP_NOTE = "gunzipped (with only the .gz files there, download=True extracts them without downloading)"

IMAGE_DATASETS: dict[str, ImageDatasetSpec] = {
    "digits": ImageDatasetSpec(
        title="scikit-learn digits",
        channels=1,
        resolution=8,
        default_resolution=16,
        num_classes=10,
        splits=("train", "fit", "val"),
        required=(),
        source="bundled with scikit-learn (sklearn.datasets.load_digits); 'train' is all 1,797 images, "
        "'val' every sixth (300) and 'fit' the other 1,497.",
        loader=_load_digits,
        downloadable=False,
        classes=_DIGITS,
    ),
    "mnist": ImageDatasetSpec(
        title="MNIST",
        channels=1,
        resolution=28,
        default_resolution=28,
        num_classes=10,
        splits=("train", "test"),
        required=tuple(f"MNIST/raw/{name}" for name in _IDX_FILES),
        source="https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of http://yann.lecun.com/exdb/mnist/): "
        f"the four idx files in root/MNIST/raw/, {_GUNZIP_NOTE}.",
        loader=_load_mnist,
        classes=_DIGITS,
        partition=("train", "test"),
    ),
    "fashion-mnist": ImageDatasetSpec(
        title="Fashion-MNIST",
        channels=1,
        resolution=28,
        default_resolution=28,
        num_classes=10,
        splits=("train", "test"),
        required=tuple(f"FashionMNIST/raw/{name}" for name in _IDX_FILES),
        source="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (see "
        "https://github.com/zalandoresearch/fashion-mnist): the four idx files in root/FashionMNIST/raw/, "
        f"{_GUNZIP_NOTE}.",
        loader=_load_fashion_mnist,
        classes=tuple(datasets.FashionMNIST.classes),
        partition=("train", "test"),
    ),
    "cifar10": ImageDatasetSpec(
        title="CIFAR-10",
        channels=3,
        resolution=32,
        default_resolution=32,
        num_classes=10,
        splits=("train", "test"),
        required=tuple(
            f"cifar-10-batches-py/{name}"
            for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
            + ("test_batch", "batches.meta")
        ),
        source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extracted in root so that "
        "root/cifar-10-batches-py/ holds data_batch_1..5, test_batch and batches.meta (torchvision checks "
        "their md5 sums).",
        loader=_load_cifar10,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        partition=("train", "test"),
    ),
    "flowers102": ImageDatasetSpec(
        title="Oxford 102 Flowers",
        channels=3,
        resolution=None,
        default_resolution=64,
        num_classes=102,
        splits=("train", "val", "test"),
        required=("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
        source="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/: 102flowers.tgz extracted in "
        "root/flowers-102/ (giving jpg/), with imagelabels.mat and setid.mat beside it; reading them needs scipy.",
        loader=_load_flowers102,
        classes=tuple(datasets.Flowers102.classes),
        partition=("train", "val", "test"),
    ),
    "oxford-pets": ImageDatasetSpec(
        title="Oxford-IIIT Pet",
        channels=3,
        resolution=None,
        default_resolution=64,
        num_classes=37,
        splits=("train", "test"),
        required=("oxford-iiit-pet/images", "oxford-iiit-pet/annotations"),
        source="https://www.robots.ox.ac.uk/~vgg/data/pets/: images.tar.gz and annotations.tar.gz extracted in "
        "root/oxford-iiit-pet/ (giving images/ and annotations/); 'train' is the official 'trainval'.",
        loader=_load_oxford_pets,
        partition=("train", "test"),
    ),
    "celeba": ImageDatasetSpec(
        title="CelebA",
        channels=3,
        resolution=None,
        default_resolution=64,
        num_classes=None,
        splits=("train", "valid", "test", "all"),
        required=("celeba/img_align_celeba", *(f"celeba/{name}" for name in _CELEBA_FILES)),
        source="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive; download=True needs gdown): "
        f"img_align_celeba.zip extracted in root/celeba/ (giving img_align_celeba/), with {', '.join(_CELEBA_FILES)} "
        "beside it. Images are 178 x 218; the centre square is kept.",
        loader=_load_celeba,
    ),
    "imagefolder": ImageDatasetSpec(
        title="image folder",
        channels=3,
        resolution=None,
        default_resolution=64,
        num_classes=None,
        splits=("train",),
        required=(".",),
        source="any folder of class subfolders, root/<class>/<image>, with root pointing at the split, e.g. "
        "ImageNet's train/ (https://image-net.org) or FFHQ's images in one subfolder "
        "(https://github.com/NVlabs/ffhq-dataset). Labels follow the sorted subfolder names.",
        loader=_load_image_folder,
        downloadable=False,
    ),
}


def _spec(name: str) -> ImageDatasetSpec:
    if name not in IMAGE_DATASETS:
        close = difflib.get_close_matches(name, IMAGE_DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown image dataset {name!r}.{hint} Valid names: {', '.join(IMAGE_DATASETS)}.")
    return IMAGE_DATASETS[name]


def _not_found(name: str, spec: ImageDatasetSpec, root: Path, missing: list[str]) -> DatasetNotFoundError:
    fetch = (
        f"or call load_image_dataset({name!r}, root={str(root)!r}, download=True) on a machine with internet."
        if spec.downloadable
        else "download=True is not available for this dataset."
    )
    return DatasetNotFoundError(
        f"{spec.title} ({name!r}) not found under {root}: missing {', '.join(str(root / p) for p in missing)}.\n"
        f"Get it from {spec.source}\n"
        f"Put the files there (on an offline cluster, fetch them elsewhere and copy them to {root.resolve()}), " + fetch
    )


def load_image_dataset(
    name: str,
    root: str | Path = "data",
    split: str = "train",
    resolution: int | None = None,
    flip: bool = False,
    download: bool = False,
    *,
    channels: int | None = None,
) -> Dataset:
    """The dataset ``name`` with items ``(image: (C, R, R) float32 in [-1, 1], label: int)``.

    ``split`` is one of ``info(name)``'s splits, or ``"all"`` for every image of a partitioned set once.

    ``R`` is ``resolution`` or the dataset's default (``info(name)``); ``C`` is ``channels`` or the dataset's
    own (RGB to grey by luminance, grey to RGB by repetition); ``flip`` adds random horizontal flips. Files are
    read from ``root`` and fetched only when ``download=True``; otherwise missing files raise
    :class:`DatasetNotFoundError` saying where they go and where to get them.
    """
    spec = _spec(name)
    if split == "all":
        if not spec.partition:
            raise ValueError(f"{name!r} has no split 'all': its splits {', '.join(spec.splits)} overlap.")
        return ConcatDataset(
            [
                load_image_dataset(name, root, part, resolution, flip, download, channels=channels)
                for part in spec.partition
            ]
        )
    if split not in spec.splits:
        valid = spec.splits + (("all",) if spec.partition else ())
        raise ValueError(f"{name!r} has no split {split!r}; its splits are {', '.join(valid)}.")
    root = Path(root).expanduser()
    # Checked here rather than left to torchvision so that the error says where the files go and where to get them.
    if not (download and spec.downloadable):
        missing = [path for path in spec.required if not (root / path).exists()]
        if missing:
            raise _not_found(name, spec, root, missing)
    transform = ImageTransform(channels or spec.channels, resolution or spec.default_resolution, flip)
    return spec.loader(root, split, transform, download)


def class_names(name: str) -> tuple[str, ...] | None:
    """The class names in label order; None where they are read from the files (``oxford-pets``,
    ``imagefolder``: the loaded dataset's ``.classes``) or there are none (``celeba``)."""
    return _spec(name).classes


def info(name: str) -> str:
    """A short human-readable description: shape, classes, splits, files and where to get them."""
    spec = _spec(name)
    native = f"{spec.resolution} x {spec.resolution}" if spec.resolution else "varying size"
    classes = f"{spec.num_classes} classes" if spec.num_classes else "classes from the files, or unlabelled"
    files = ", ".join(str(Path("root") / path) for path in spec.required) or "none"
    splits = ", ".join(spec.splits + (("all",) if spec.partition else ()))
    return (
        f"{spec.title} ({name!r}): {spec.channels} channel(s), {native} (default resolution "
        f"{spec.default_resolution}), {classes}; splits {splits}.\n"
        f"Files: {files}\nSource: {spec.source}"
    )


def stack_dataset(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """Every item of a small dataset at once: ``images: (N, C, R, R)`` and ``labels: (N,)`` int64.

    For sets that fit in memory (``digits``, a few thousand images) this transforms each image once, so a CPU
    training loop indexes a tensor instead of resizing images at every step. Random flips are drawn once here.
    """
    images, labels = zip(*(dataset[k] for k in range(len(cast(Sized, dataset)))), strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)
