"""Metrics: distances between samples and data, on toy 2-D points and on network features."""

from diffbook.metrics.fid import feature_statistics, fid_from_features, frechet_distance, kernel_inception_distance
from diffbook.metrics.inception_score import inception_score
from diffbook.metrics.isotropy import forward_isotropy, isotropy, predicted_noise_isotropy
from diffbook.metrics.prdc import prdc
from diffbook.metrics.toy import mmd_rbf, negative_log_likelihood, pairwise_distance_w1, sliced_wasserstein

__all__ = [
    "feature_statistics",
    "fid_from_features",
    "forward_isotropy",
    "frechet_distance",
    "inception_score",
    "isotropy",
    "kernel_inception_distance",
    "mmd_rbf",
    "negative_log_likelihood",
    "predicted_noise_isotropy",
    "pairwise_distance_w1",
    "prdc",
    "sliced_wasserstein",
]
