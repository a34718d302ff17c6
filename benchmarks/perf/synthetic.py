"""Data in the real on-disk formats, made offline, for benchmarks and tests of the loaders and the evaluation.

- CIFAR-10 as ``cifar-10-python.tar.gz`` extracts it: pickled batches of ``(N, 3072)`` uint8 rows (R, G, B planes)
  with their labels. torchvision checks each file's md5 against the real archive's; :func:`cifar10_checksums`
  gives the attributes that make it check these files instead.
- Digits as a folder of PNGs, the layout ``python -m diffbook sample`` writes and ``evaluate`` reads.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from diffbook.data import class_names, load_image_dataset, stack_dataset

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, "test_batch")


def write_cifar10_batches(root: str | Path, batches: Mapping[str, tuple[np.ndarray, list[int]]]) -> dict[str, str]:
    """Write ``root/cifar-10-batches-py/``: each of :data:`CIFAR10_FILES` from ``batches[name] = (pixels, labels)``,
    ``pixels: (N, 32, 32, 3)`` uint8, and ``batches.meta``. Returns every file's md5 sum, by name."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    payloads = {
        name: {"data": pixels.transpose(0, 3, 1, 2).reshape(len(pixels), 3072), "labels": list(labels)}
        for name, (pixels, labels) in batches.items()
    }
    payloads["batches.meta"] = {"label_names": list(class_names("cifar10"))}
    checksums = {}
    for name, payload in payloads.items():
        data = pickle.dumps(payload, protocol=2)
        (folder / name).write_bytes(data)
        checksums[name] = hashlib.md5(data).hexdigest()
    return checksums


def random_cifar10(root: str | Path, images_per_file: int, seed: int = 0) -> dict[str, str]:
    """:func:`write_cifar10_batches` with uniform random pixels and labels; returns the md5 sums."""
    rng = np.random.default_rng(seed)
    batches = {
        name: (rng.integers(0, 256, (images_per_file, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, images_per_file))
        for name in CIFAR10_FILES
    }
    return write_cifar10_batches(root, batches)


def cifar10_checksums(checksums: Mapping[str, str]) -> dict[str, object]:
    """The class attributes of torchvision's ``CIFAR10`` (``train_list``, ``test_list``, ``meta``) that make it
    verify files with the md5 sums ``checksums`` (from :func:`write_cifar10_batches`) rather than the real archive's."""
    from torchvision.datasets import CIFAR10

    return {
        "train_list": [[name, checksums[name]] for name, _ in CIFAR10.train_list],
        "test_list": [[name, checksums[name]] for name, _ in CIFAR10.test_list],
        "meta": {**CIFAR10.meta, "md5": checksums["batches.meta"]},
    }


@contextmanager
def patched(owner: object, attributes: Mapping[str, object]) -> Iterator[None]:
    """Set ``attributes`` on ``owner`` for the duration of the block, then restore them."""
    saved = {name: getattr(owner, name) for name in attributes}
    for name, value in attributes.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(owner, name, value)


def digits_images(count: int, resolution: int = 16, seed: int = 0) -> torch.Tensor:
    """``count`` digits ``(count, 1, R, R)`` uint8: scikit-learn's 1,797, repeated, each shifted by up to a pixel
    each way, so that a large set is not one small set many times over."""
    from diffbook.data.pixels import to_uint8

    images, _ = stack_dataset(load_image_dataset("digits", resolution=resolution))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(images), (count,), generator=generator)
    shifts = torch.randint(-1, 2, (count, 2), generator=generator)
    shifted = torch.stack([images[k].roll(tuple(s.tolist()), dims=(1, 2)) for k, s in zip(picks, shifts, strict=True)])
    return torch.from_numpy(to_uint8(shifted)).permute(0, 3, 1, 2)


def write_png_folder(folder: str | Path, images: torch.Tensor) -> Path:
    """``images: (N, C, H, W)`` uint8 as ``folder/{k:06d}.png``, as ``python -m diffbook sample`` writes them."""
    from diffbook.data.pixels import write_pngs

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_pngs(folder, range(len(images)), images.permute(0, 2, 3, 1).numpy())
    return folder
