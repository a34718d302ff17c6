"""Feature networks for image metrics: a small digits classifier, and clean-fid's Inception-v3.

FID, KID and PRDC compare feature vectors and the Inception score reads class logits, so each network here maps
images to ``(features, logits)``. Inception-v3 knows nothing of 16 x 16 greyscale digits; for them the package
ships :class:`DigitsFeatureNet`, trained on scikit-learn's digits, whose 64-d penultimate layer plays the part
of Inception's 2048-d pool features. Its numbers compare digits models with each other, never with Inception
FIDs.

The committed weights (``metrics/weights/digits_features.pt``) were made with::

    python -m diffbook train-feature-net digits --steps 1000 --seed 0

and classify the 300 held-out digits (the registry's ``val`` split) 98.7 % correctly (float16 weights, 180 KiB).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.data import load_image_dataset, stack_dataset
from diffbook.data.pixels import to_uint8, uint8_to_unit
from diffbook.metrics.fid import feature_statistics, fid_from_features, frechet_distance, kernel_inception_distance
from diffbook.metrics.inception_score import inception_score
from diffbook.metrics.prdc import prdc
from diffbook.runtime.files import cached_file
from diffbook.runtime.progress import progress_bar

DIGITS_RESOLUTION = 16
DIGITS_WEIGHTS = "metrics/weights/digits_features.pt"


class DigitsFeatureNet(nn.Module):
    """A CNN classifier for ``(B, 1, R, R)`` digits in [-1, 1]; ``R = 16``, other sizes are resized to 16.

    Three conv stages (16, 32, 64 channels; 16 -> 8 -> 4 pixels), then a ``feature_dim`` layer whose
    pre-activation, standardised over the training digits, is the feature vector, then 10 logits.
    """

    feature_mean: Tensor  # buffers: the features' standardisation, saved with the weights
    feature_std: Tensor

    def __init__(self, feature_dim: int = 64) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.embed = nn.Linear(64 * 4 * 4, feature_dim)
        self.classify = nn.Linear(feature_dim, 10)
        # Per-dimension statistics of the training digits' features, set once training ends: KID's polynomial
        # kernel is not scale-invariant, and standardised features give it O(1) inner products, as Inception's do.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images: (B, 1, R, R) in [-1, 1] -> features (B, feature_dim), logits (B, 10)."""
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[-2] != images.shape[-1]:
            raise ValueError(
                f"the digits feature network reads square one-channel images, got images of shape "
                f"{tuple(images.shape[1:])}; for colour images use --features inception"
            )
        if images.shape[-1] != DIGITS_RESOLUTION:
            images = F.interpolate(images, size=DIGITS_RESOLUTION, mode="bilinear", antialias=True)
        # The pre-activation features are Gaussian-like; after a ReLU many would be exactly zero, which leaves
        # FID's covariance singular.
        hidden = self.embed(self.conv(images).flatten(1))
        return (hidden - self.feature_mean) / self.feature_std, self.classify(F.relu(hidden))

    @torch.no_grad()
    def standardise(self, images: Tensor) -> None:
        """Make the features of ``images: (N, 1, R, R)`` zero-mean and unit-variance in every dimension."""
        self.feature_mean.zero_()
        self.feature_std.fill_(1)
        features, _ = self.eval()(images)
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-6))


def _digits_split(split: str) -> tuple[Tensor, Tensor]:
    return stack_dataset(load_image_dataset("digits", split=split, resolution=DIGITS_RESOLUTION))


@torch.no_grad()
def held_out_accuracy(net: DigitsFeatureNet) -> float:
    """The fraction of the 300 held-out digits (the registry's ``val`` split) that ``net`` classifies right."""
    images, labels = _digits_split("val")
    _, logits = net.eval()(images)
    return (logits.argmax(dim=1) == labels).double().mean().item()


def _shift(images: Tensor, generator: torch.Generator) -> Tensor:
    """Each image moved by up to one pixel each way: generated digits are rarely centred as the data are."""
    dx, dy = torch.randint(-1, 2, (2,), generator=generator).tolist()
    return images.roll((dy, dx), dims=(2, 3))


def train_digits_feature_net(steps: int = 1500, seed: int = 0, batch_size: int = 128) -> DigitsFeatureNet:
    """Train :class:`DigitsFeatureNet` with Adam on the 1,497 ``fit`` digits; the 300 ``val`` ones stay unseen."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images, labels = _digits_split("fit")
    net = DigitsFeatureNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    net.train()
    for _ in range(steps):
        index = torch.randint(len(images), (batch_size,), generator=generator)
        _, logits = net(_shift(images[index], generator))
        loss = F.cross_entropy(logits, labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    net.standardise(images)
    return net.eval()


def save_digits_feature_net(net: DigitsFeatureNet, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() for k, v in net.state_dict().items()}, path)


def load_digits_feature_net(path: str | Path | None = None) -> DigitsFeatureNet:
    """The trained digits feature network: the package's committed weights, or those at ``path``."""
    source = Path(path) if path is not None else resources.files("diffbook") / DIGITS_WEIGHTS
    with source.open("rb") as file:
        state = torch.load(file, map_location="cpu", weights_only=True)
    net = DigitsFeatureNet()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()


@torch.no_grad()
def extract_features(
    net: nn.Module, images: Tensor, batch_size: int = 256, progress: str | None = None
) -> tuple[Tensor, Tensor]:
    """``(features: (N, D), logits: (N, K))`` of ``images: (N, C, H, W)``, uint8 or float in [-1, 1].

    ``progress``: the label of a progress bar over the batches; None shows none."""
    device = next(net.parameters()).device
    batches = progress_bar(images.split(batch_size), desc=progress, enabled=progress is not None, unit="batch")
    outputs = [net(_as_input(batch).to(device)) for batch in batches]
    features, logits = zip(*outputs, strict=True)
    return torch.cat(features).cpu(), torch.cat(logits).cpu()


def _as_input(images: Tensor) -> Tensor:
    return uint8_to_unit(images) if images.dtype == torch.uint8 else images


class InceptionWeightsMissingError(FileNotFoundError):
    """clean-fid's Inception-v3 weights are not on disk; the message says where to get them and put them."""


INCEPTION_MODES = ("clean", "legacy_tensorflow")


class InceptionFeatures(nn.Module):
    """clean-fid's Inception-v3 (the TensorFlow FID network as TorchScript): 2048-d pool features and logits.

    ``mode='clean'`` resizes with PIL bicubic to 299 x 299 before the network (Parmar et al. 2022);
    ``'legacy_tensorflow'`` lets the network resize, as TensorFlow FID code did. The weights are read from
    diffbook's cache folder (:func:`~diffbook.runtime.files.cache_dir`) after a check against the SHA-256 recorded
    when ``python -m diffbook fetch-inception`` put them there; nothing is downloaded here, so an offline cluster
    fails at once with a message saying what to fetch.
    Input: ``(B, C, H, W)`` uint8. Output: features ``(B, 2048)``, logits ``(B, 1008)``.
    """

    def __init__(self, mode: str = "clean") -> None:
        super().__init__()
        if mode not in INCEPTION_MODES:
            raise ValueError(f"mode must be one of {', '.join(INCEPTION_MODES)}, got {mode!r}")
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        weights = inception_weights()
        self.mode = mode
        self.resize = build_resizer(mode)
        self.inception = InceptionV3W(str(weights.parent), download=False, resize_inside=mode == "legacy_tensorflow")
        # A real parameter, so that extract_features finds the device the TorchScript module sits on.
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception reads grey or RGB images (B, 1 or 3, H, W), got {tuple(images.shape)}")
        x = ((images + 1) * 127.5).round().clamp(0, 255) if images.dtype != torch.uint8 else images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.mode == "clean":
            resized = [self.resize(image.permute(1, 2, 0).cpu().numpy()) for image in x]
            x = torch.stack([torch.from_numpy(r).permute(2, 0, 1) for r in resized]).to(self.anchor.device)
        features = self.inception(x)
        # Without the output bias, as the original Inception-score code (and StyleGAN's metrics) compute it.
        logits = features @ self.inception.base.output.weight.T
        return features, logits


INCEPTION_FILE = "inception-2015-12-05.pt"


def inception_weights() -> Path:
    """clean-fid's Inception weights in the cache, checked against their recorded SHA-256.

    Raises :class:`InceptionWeightsMissingError` when they were never fetched, and ValueError when the file
    changed since it was."""
    from cleanfid.downloads_helper import inception_url

    fix = (
        f"run python -m diffbook fetch-inception, which downloads {inception_url}; offline, download it elsewhere "
        "and run fetch-inception --from FILE"
    )
    try:
        return cached_file(INCEPTION_FILE, fix)
    except FileNotFoundError as missing:
        raise InceptionWeightsMissingError(f"Inception-v3 weights: {missing}") from None


CLEANFID_STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"


def cleanfid_reference_statistics(
    name: str, resolution: int, mode: str = "clean", split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """clean-fid's precomputed Inception statistics ``(mu: (2048,), sigma: (2048, 2048))``, e.g. for
    ``("cifar10", 32, "legacy_tensorflow", "train")``. Read from clean-fid's ``stats/`` folder, downloaded there
    by clean-fid when missing; offline, a missing file raises FileNotFoundError naming the URL and the path."""
    import cleanfid
    from cleanfid.features import get_reference_statistics

    if mode not in INCEPTION_MODES:
        raise ValueError(f"mode must be one of {', '.join(INCEPTION_MODES)}, got {mode!r}")
    filename = f"{name}_{mode}_{split}_{resolution}.npz".lower()
    path = Path(cleanfid.__file__).parent / "stats" / filename
    if path.is_file():
        stats = np.load(path)
        return stats["mu"], stats["sigma"]
    try:
        return get_reference_statistics(name, resolution, mode=mode, split=split)
    except OSError as error:  # urllib's URLError, offline or for a set clean-fid does not have
        raise FileNotFoundError(
            f"clean-fid reference statistics {filename} not found at {path}, and the download from "
            f"{CLEANFID_STATS_URL}{filename} failed ({error}). On an offline cluster, fetch that URL elsewhere "
            f"and copy the file to {path}."
        ) from error


METRICS = ("fid", "kid", "is", "prdc")


def metrics_needing_reference_features(metrics: Sequence[str], from_statistics: bool) -> list[str]:
    """Those of ``metrics`` that compare with reference features: all but IS, and but FID when it can use
    precomputed statistics."""
    return sorted(set(metrics) - {"is"} - ({"fid"} if from_statistics else set()))


def feature_metrics(
    metrics: Sequence[str],
    sample_features: Tensor,
    sample_logits: Tensor,
    reference_features: Tensor | None = None,
    reference_statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """The requested metrics of samples against a reference, given as features or as FID statistics.

    ``sample_features: (N, D)``, ``sample_logits: (N, K)``, ``reference_features: (M, D)``. Returns ``fid``;
    ``kid`` and ``kid_std``; ``is`` and ``is_std`` (over min(10, N) splits); ``precision``, ``recall``,
    ``density``, ``coverage`` (k = 5). Only FID can use ``reference_statistics`` instead of features.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    needs_features = metrics_needing_reference_features(metrics, reference_statistics is not None)
    if needs_features and reference_features is None:
        raise ValueError(f"{', '.join(needs_features)} need reference images, not only reference statistics")
    results: dict[str, float] = {}
    if "fid" in metrics:
        if reference_statistics is not None:
            results["fid"] = frechet_distance(*feature_statistics(sample_features), *reference_statistics)
        else:
            assert reference_features is not None  # checked above: FID needs one or the other
            results["fid"] = fid_from_features(reference_features, sample_features)
    if "kid" in metrics:
        assert reference_features is not None  # checked above
        results["kid"], results["kid_std"] = kernel_inception_distance(
            reference_features, sample_features, generator=torch.Generator().manual_seed(0)
        )
    if "is" in metrics:
        results["is"], results["is_std"] = inception_score(sample_logits, min(10, len(sample_logits)), from_logits=True)
    if "prdc" in metrics:
        assert reference_features is not None  # checked above
        results.update(prdc(reference_features, sample_features, k=5))
    return results


def class_agreement(logits: Tensor, labels: Tensor | None = None) -> dict[str, float]:
    """How surely a classifier reads samples as their class: ``logits: (N, K)``, ``labels: (N,)`` int64 or None.

    With labels (class-conditional samples): ``confidence``, the mean softmax probability of each sample's own
    label, and ``accuracy``, the fraction classified as it. Without: ``confidence``, the mean largest probability.
    """
    probs = logits.float().softmax(dim=1)
    if labels is None:
        return {"confidence": probs.max(dim=1).values.mean().item()}
    own = probs.gather(1, labels.long()[:, None]).squeeze(1)
    return {"confidence": own.mean().item(), "accuracy": (probs.argmax(dim=1) == labels).float().mean().item()}


def digits_scores(samples: Tensor, reference: Tensor, labels: Tensor | None = None) -> dict[str, float]:
    """FID and PRDC (k = 5) on the digits feature network, and :func:`class_agreement` with ``labels``.

    ``samples: (N, 1, 16, 16)`` in [-1, 1], quantised to uint8 as saved images are; ``reference: (M, 1, 16, 16)``
    uint8 (e.g. :func:`diffbook.data.pixels.load_reference`); ``labels: (N,)`` the classes the samples were drawn for.
    """

    net = load_digits_feature_net()
    fake = torch.from_numpy(to_uint8(samples)).permute(0, 3, 1, 2)
    fake_features, fake_logits = extract_features(net, fake)
    real_features, _ = extract_features(net, reference)
    scores = feature_metrics(["fid", "prdc"], fake_features, fake_logits, real_features)
    return {**scores, **class_agreement(fake_logits, labels)}
