"""The papers' evaluation protocols on TF-Inception features: ADM's evaluator and EDM's FID.

The ImageNet papers (DiT, DiffiT, SADM, BCM) report the five numbers of ADM's evaluator (Dhariwal & Nichol 2021,
``evaluations/evaluator.py``): FID on ``pool_3``, sFID on ``mixed_6/conv[..., :7]``, the Inception score over
chunks of 5,000 samples, and improved precision and recall (Kynkaanniemi et al. 2019) with k = 3, all against a
*reference batch*: an ``.npz`` holding ``arr_0`` ``(N, H, W, 3)`` uint8 images and, optionally, their statistics
``mu``, ``sigma`` (pool) and ``mu_s``, ``sigma_s`` (spatial). The CIFAR-10 papers report EDM's ``fid.py``
(Karras et al. 2022): FID on ``pool_3`` against the statistics ``mu``, ``sigma`` of the 50,000 training images.

Where ADM's definitions agree with the package's metrics they are reused: FID and sFID are
:func:`~diffbook.metrics.fid.frechet_distance` of :func:`~diffbook.metrics.fid.feature_statistics` (unbiased
covariance, as ``np.cov``), and each chunk's score is :func:`~diffbook.metrics.inception_score.inception_score`.
Precision and recall differ from :func:`~diffbook.metrics.prdc.prdc` in two ways, so
:func:`adm_precision_recall` implements ADM's: k = 3, not 5, and a point on a ball's boundary is inside it
(``<=``, where ``prdc`` has ``<``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffbook.data.pixels import load_reference, read_image_folder
from diffbook.metrics.fid import feature_statistics, frechet_distance
from diffbook.metrics.inception_score import inception_score
from diffbook.metrics.prdc import distance_blocks, neighbour_balls
from diffbook.runtime.progress import progress_bar

ADM_SPLIT_SIZE = 5000  # samples per Inception-score chunk in ADM's evaluator
ADM_NEIGHBOURS = 3  # k of ADM's ManifoldEstimator
PROTOCOLS = ("adm", "edm")
Statistics = tuple[np.ndarray, np.ndarray]  # mu: (D,), sigma: (D, D)


def read_samples(path: str | Path) -> Tensor:
    """Images as ``(N, C, H, W)`` uint8 from a folder of PNGs (or of ``samples*.npz``), or from one ``.npz`` file in
    ADM's layout (``arr_0``: ``(N, H, W, C)`` uint8; ``arr_1``, the labels, is not read)."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".npz":
        return read_image_folder(path)
    return torch.from_numpy(_npz_images(path)).permute(0, 3, 1, 2).contiguous()


def _npz_images(path: Path) -> np.ndarray:
    """``arr_0`` of an ADM ``.npz``: ``(N, H, W, C)`` uint8, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    with np.load(path) as npz:
        if "arr_0" not in npz:
            raise ValueError(f"{path} holds {', '.join(npz.files)}, not arr_0: the (N, H, W, 3) uint8 images")
        images = npz["arr_0"]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: arr_0 must be (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    return images


@torch.no_grad()
def tf_inception_features(
    net: nn.Module, images: Tensor, batch_size: int = 64, progress: str | None = None
) -> dict[str, Tensor]:
    """The features ``pool (N, 2048)``, ``spatial (N, 2023)`` and ``logits (N, 1008)`` of ``images: (N, C, H, W)``
    uint8, in batches of ``batch_size`` on ``net``'s device; ``progress``: a progress bar's label, or None."""
    if images.dtype != torch.uint8:
        raise ValueError(f"TF-Inception protocols read uint8 images, got {images.dtype}")
    device = next(net.parameters()).device
    batches = progress_bar(images.split(batch_size), desc=progress, enabled=progress is not None, unit="batch")
    outputs = [{key: value.cpu() for key, value in net(batch.to(device)).items()} for batch in batches]
    return {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}


def batch_statistics(features: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """``mu``, ``sigma`` of the pool features and ``mu_s``, ``sigma_s`` of the spatial ones (ADM's ``.npz`` keys)."""
    mu, sigma = feature_statistics(features["pool"])
    mu_s, sigma_s = feature_statistics(features["spatial"])
    return {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}


def write_reference_batch(
    path: str | Path, images: np.ndarray, statistics: dict[str, np.ndarray] | None = None
) -> None:
    """Save ``images: (N, H, W, 3)`` uint8 as ADM's reference batch ``arr_0``, with ``statistics`` (the keys of
    :func:`batch_statistics`) when given."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"a reference batch holds (N, H, W, 3) uint8 images, got {images.dtype} {images.shape}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, arr_0=images, **(statistics or {}))  # type: ignore[arg-type]  # the stub matches ** to allow_pickle


def read_reference_batch(
    path: str | Path, net: nn.Module, batch_size: int = 64
) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    """ADM's reference batch: the features of its images (:func:`tf_inception_features`) and its statistics.

    The statistics are the file's ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` when it has them, as ADM reads them,
    else computed from ``arr_0``. Precision and recall always need the images' own features."""
    path = Path(path)
    images = torch.from_numpy(_npz_images(path)).permute(0, 3, 1, 2).contiguous()
    features = tf_inception_features(net, images, batch_size, progress="features of the reference batch")
    keys = ("mu", "sigma", "mu_s", "sigma_s")
    with np.load(path) as npz:
        stored = {key: npz[key] for key in keys if key in npz}
    if stored and len(stored) < len(keys):
        raise ValueError(f"{path} has {', '.join(stored)} but not {', '.join(sorted(set(keys) - set(stored)))}")
    return features, stored or batch_statistics(features)


def adm_inception_score(logits: Tensor, split_size: int = ADM_SPLIT_SIZE) -> float:
    """ADM's Inception score: the mean over consecutive chunks of ``split_size`` samples (the last may be shorter)
    of each chunk's score, from ``logits: (N, K)``."""
    scores = [inception_score(chunk, splits=1, from_logits=True)[0] for chunk in logits.split(split_size)]
    return float(np.mean(scores))


def adm_precision_recall(
    reference: Tensor | np.ndarray,
    samples: Tensor | np.ndarray,
    k: int = ADM_NEIGHBOURS,
    max_block_elements: int = 2**23,
) -> tuple[float, float]:
    """ADM's improved precision and recall of ``samples: (M, D)`` against ``reference: (N, D)``, on their device.

    Each point's ball reaches its k-th nearest neighbour in its own set. Precision is the share of samples inside
    (``<=``) some reference ball, recall the share of reference points inside some sample ball. Distances are
    exact here (float64); ADM rounds squared distances to float16, which moves points on a boundary."""
    real, fake, real_radii, fake_radii = neighbour_balls(reference, samples, k, max_block_elements)
    in_a_real_ball = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    in_a_fake_ball = []
    for block, distances in distance_blocks(real, fake, max_block_elements):  # distances: (block, M)
        in_a_real_ball |= (distances <= real_radii[block, None]).any(dim=0)
        in_a_fake_ball.append((distances <= fake_radii).any(dim=1))
    return float(in_a_real_ball.double().mean()), float(torch.cat(in_a_fake_ball).double().mean())


def adm_metrics(
    sample_images: Tensor, reference_npz: str | Path, net: nn.Module, batch_size: int = 64
) -> dict[str, float]:
    """ADM's five numbers for ``sample_images: (N, C, H, W)`` uint8 against the reference batch ``reference_npz``.

    Returns ``fid``, ``sfid``, ``inception_score``, ``precision`` and ``recall``; ``net`` is
    :class:`~diffbook.metrics.tf_inception.TFInceptionV3` (its docstring says how closely each matches ADM's)."""
    reference, reference_stats = read_reference_batch(reference_npz, net, batch_size)
    samples = tf_inception_features(net, sample_images, batch_size, progress="features of the samples")
    sample_stats = batch_statistics(samples)
    device = next(net.parameters()).device  # 50,000 x 10,000 distances in 2048-d: a GPU's job
    precision, recall = adm_precision_recall(reference["pool"].to(device), samples["pool"].to(device))
    return {
        "fid": frechet_distance(
            sample_stats["mu"], sample_stats["sigma"], reference_stats["mu"], reference_stats["sigma"]
        ),
        "sfid": frechet_distance(
            sample_stats["mu_s"], sample_stats["sigma_s"], reference_stats["mu_s"], reference_stats["sigma_s"]
        ),
        "inception_score": adm_inception_score(samples["logits"]),
        "precision": precision,
        "recall": recall,
    }


def reference_statistics(
    ref: str | Path, net: nn.Module, resolution: int, root: str | Path = "data", batch_size: int = 64
) -> Statistics:
    """EDM's reference ``(mu: (2048,), sigma: (2048, 2048))``: read from an ``.npz`` with ``mu`` and ``sigma`` (as
    EDM's ``fid.py ref`` writes), or computed from the train split of a registry dataset under ``root`` (e.g.
    ``cifar10``) at ``resolution``, which is never downloaded here."""
    path = Path(ref)
    if path.suffix == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"reference statistics {path} not found")
        with np.load(path) as npz:
            if "mu" not in npz or "sigma" not in npz:
                raise ValueError(f"{path} holds {', '.join(npz.files)}; EDM's reference statistics are mu and sigma")
            return npz["mu"], npz["sigma"]
    images = load_reference(str(ref), resolution, 3, root, "train")
    features = tf_inception_features(net, images, batch_size, progress=f"features of {ref}")
    return feature_statistics(features["pool"])


def edm_fid(sample_images: Tensor, reference: Statistics, net: nn.Module, batch_size: int = 64) -> float:
    """EDM's FID of ``sample_images: (N, C, H, W)`` uint8 against ``reference = (mu, sigma)`` on ``pool_3``.

    EDM's ``fid.py calc`` scores 50,000 samples; this scores all that are given."""
    features = tf_inception_features(net, sample_images, batch_size, progress="features of the samples")
    return frechet_distance(*feature_statistics(features["pool"]), *reference)


def protocol_metrics(
    protocol: str, samples: Tensor, ref: str, net: nn.Module, root: str | Path = "data", batch_size: int = 64
) -> dict[str, float]:
    """The numbers a paper's protocol reports for ``samples: (N, C, H, W)`` uint8: ``adm`` (:func:`adm_metrics`
    against the reference batch ``ref``, an ``.npz``) or ``edm`` (``fid``, :func:`edm_fid` against
    :func:`reference_statistics` of ``ref``, a dataset under ``root`` or an ``.npz`` of ``mu``, ``sigma``)."""
    if protocol == "adm":
        if Path(ref).suffix != ".npz":
            raise ValueError(
                f"--protocol adm compares with a reference batch .npz (ADM's layout: arr_0, and optionally mu, "
                f"sigma, mu_s, sigma_s), got {ref!r}"
            )
        return adm_metrics(samples, ref, net, batch_size)
    if protocol == "edm":
        reference = reference_statistics(ref, net, samples.shape[-1], root, batch_size)
        return {"fid": edm_fid(samples, reference, net, batch_size)}
    raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
