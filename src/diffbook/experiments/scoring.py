"""Scoring a trained model: samples drawn with the run's sampler, against a reference set, with the metrics
that fit the data.

Toy points: precision, recall, density and coverage (k = 5), the sliced Wasserstein distance and the W1 distance
of pairwise distances (a structure statistic) against a fresh draw of the same size; a consistency model on a
Gaussian mixture adds its multistep, inversion and jump scores against the exact ODE (:func:`flow_scores`).
Digits: the same PRDC and FID on the digits feature network against the whole set. Other image sets: on
Inception features (needs the weights).

Run ``s`` samples from seeds ``s * SAMPLE_SEED_STRIDE + k``, ``k = 0, 1, ...``: two methods trained with the same
seed start their samples from the same noise (paired), and no two training seeds share a sample's noise.
"""

from __future__ import annotations

import time
from typing import Any, cast

import torch
from torch import Tensor

from diffbook.diffusion import BidirectionalConsistency
from diffbook.experiments.experiment import Experiment, Model
from diffbook.samplers import sample_count

REFERENCE_SEED_OFFSET = 1_000_003  # reference draws use seeds no training run uses
SAMPLE_SEED_STRIDE = 1_000_000


def reference_set(experiment: Experiment, seed: int, count: int | None = None) -> Tensor:
    """What samples are scored against. Toy: a fresh draw of ``count`` points (10,000 by default) with a seed
    that no training run uses. Images: the configured set (its first ``count``) as ``(N, C, R, R)`` uint8."""
    data = experiment.data
    if experiment.is_toy:
        from diffbook.data import sample_toy

        return sample_toy(data.name, count or 10_000, seed=REFERENCE_SEED_OFFSET + seed)
    from diffbook.data.pixels import load_reference

    channels, resolution, _ = experiment.sample_shape
    images = load_reference(data.name, resolution, channels, data.root, data.split)  # type: ignore[union-attr]
    return images[:count]


@torch.no_grad()
def draw_samples(model: Model, experiment: Experiment, count: int, seed: int, batch_size: int = 10_000) -> Tensor:
    """``count`` samples ``(count, *sample_shape)`` of run ``seed`` with the experiment's sampler. A
    class-conditional model draws every class in turn (sample ``k``'s label is ``k mod num_classes``), so that its
    samples are scored as the conditional model, with the config's guidance, that it is."""
    classes, first = experiment.num_classes, seed * SAMPLE_SEED_STRIDE
    labels = [(index - first) % classes for index in range(classes)] if classes else None  # seed first gets 0
    return sample_count(model, experiment.sampler, count, experiment.sample_shape, first, labels, batch_size)


def score(experiment: Experiment, samples: Tensor, reference: Tensor) -> dict[str, float]:
    """Toy: PRDC (k = 5), the sliced Wasserstein distance and the pairwise-distance W1. Images (``samples`` in
    [-1, 1], ``reference`` uint8): FID and PRDC on the digits feature network (digits) or on Inception features."""
    if experiment.is_toy:
        from diffbook.metrics import pairwise_distance_w1, prdc, sliced_wasserstein

        results = prdc(reference, samples, k=5)
        generator = torch.Generator().manual_seed(0)
        results["sliced_wasserstein"] = sliced_wasserstein(reference, samples, generator=generator)
        results["pairwise_w1"] = pairwise_distance_w1(reference, samples, generator=generator)
        return results
    from diffbook.data.pixels import to_uint8
    from diffbook.metrics.features import InceptionFeatures, extract_features, feature_metrics, load_digits_feature_net

    net = load_digits_feature_net() if experiment.data.name == "digits" else InceptionFeatures()
    fake = torch.from_numpy(to_uint8(samples)).permute(0, 3, 1, 2)
    fake_features, fake_logits = extract_features(net, fake)
    real_features, _ = extract_features(net, reference)
    return feature_metrics(["fid", "prdc"], fake_features, fake_logits, real_features)


def flow_scores(experiment: Experiment, model: Model, count: int, seed: int) -> dict[str, float]:
    """A consistency model (``process.kind: bcm``) on a Gaussian-mixture toy set: its multistep generation,
    inversions and jumps against the exact ODE (:func:`diffbook.metrics.flow.consistency_scores`). Nothing for
    other runs, whose samples :func:`score` covers."""
    if experiment.config["process"]["kind"] != "bcm" or not experiment.is_toy:
        return {}
    from diffbook.data import GaussianMixture, density, has_density
    from diffbook.metrics.flow import consistency_scores

    name = experiment.data.name
    if not has_density(name) or not isinstance(mixture := density(name), GaussianMixture):
        return {}
    return consistency_scores(cast(BidirectionalConsistency, model), mixture, count, seed)


def evaluate(
    model: Model, experiment: Experiment, seed: int, num_samples: int | None, save_to: Any = None
) -> dict[str, Any]:
    """Sample ``model`` as many times as the reference set has items and score the samples (:func:`score`).
    Returns ``metrics``, ``num_samples``, ``nfe`` and ``sample_seconds``; the samples go to ``save_to`` if given."""
    reference = reference_set(experiment, seed, num_samples)
    start = time.perf_counter()
    samples = draw_samples(model, experiment, len(reference), seed)
    sample_seconds = time.perf_counter() - start
    if save_to is not None:
        torch.save(samples, save_to)
    return {
        "metrics": score(experiment, samples, reference),
        "num_samples": len(reference),
        "nfe": experiment.sampler.nfe,
        "sample_seconds": sample_seconds,
    }
