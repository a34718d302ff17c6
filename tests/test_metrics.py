"""FID, KID, Inception score, PRDC, isotropy and the data NLL against closed forms and reference code."""

import math

import numpy as np
import pytest
import torch
from prdc import compute_prdc

from diffbook.data.toy2d import density
from diffbook.diffusion import DDPM
from diffbook.metrics import (
    feature_statistics,
    fid_from_features,
    forward_isotropy,
    frechet_distance,
    inception_score,
    isotropy,
    kernel_inception_distance,
    negative_log_likelihood,
    prdc,
)


def _random_covariance(rng: np.random.Generator, D: int) -> np.ndarray:
    A = rng.normal(size=(D, D))
    return A @ A.T + 0.1 * np.eye(D)


def _symmetric_sqrt(S: np.ndarray) -> np.ndarray:
    eigenvalues, eigenvectors = np.linalg.eigh(S)
    return eigenvectors * np.sqrt(eigenvalues.clip(min=0)) @ eigenvectors.T


def _frechet_by_eigendecomposition(mu1, S1, mu2, S2) -> float:
    """``tr sqrt(S1 S2) = tr sqrt(sqrt(S1) S2 sqrt(S1))``, and the latter is symmetric, so ``eigvalsh`` suffices."""
    root = _symmetric_sqrt(S1)
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(root @ S2 @ root).clip(min=0)).sum()
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(S1) + np.trace(S2) - 2 * trace_sqrt)


# --- Frechet distance -------------------------------------------------------------------------------------------


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 0.5])
    s1, s2 = np.array([0.5, 2.0, 1.0]), np.array([1.0, 0.3, 4.0])
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_general_gaussians_matches_an_eigendecomposition():
    rng = np.random.default_rng(0)
    mu1, mu2, S1, S2 = rng.normal(size=3), rng.normal(size=3), _random_covariance(rng, 3), _random_covariance(rng, 3)
    expected = _frechet_by_eigendecomposition(mu1, S1, mu2, S2)
    assert frechet_distance(mu1, S1, mu2, S2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_is_zero_for_identical_statistics_and_symmetric():
    rng = np.random.default_rng(1)
    mu1, mu2, S1, S2 = rng.normal(size=5), rng.normal(size=5), _random_covariance(rng, 5), _random_covariance(rng, 5)
    assert frechet_distance(mu1, S1, mu1, S1) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(mu1, S1, mu2, S2) == pytest.approx(frechet_distance(mu2, S2, mu1, S1), rel=1e-10)


def test_fid_of_two_large_gaussian_samples_is_close_to_the_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2, S1, S2 = rng.normal(size=3), rng.normal(size=3), _random_covariance(rng, 3), _random_covariance(rng, 3)
    a = torch.from_numpy(rng.multivariate_normal(mu1, S1, size=50_000))  # tensors and arrays are both accepted
    b = rng.multivariate_normal(mu2, S2, size=50_000)
    expected = _frechet_by_eigendecomposition(mu1, S1, mu2, S2)
    assert fid_from_features(a, b) == pytest.approx(expected, rel=0.03)


def test_feature_statistics_are_the_mean_and_unbiased_covariance():
    features = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(mu, [2.0, 2.0])
    np.testing.assert_allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])  # sums of products / (N - 1)


def test_a_singular_covariance_product_is_regularised_not_fatal():
    """An exactly singular product gets eps I on both diagonals, which moves the distance by ~sqrt(eps)."""
    s1, s2 = np.array([1.0, 0.0, 2.0]), np.array([0.0, 3.0, 1.0])
    with pytest.warns(RuntimeWarning, match="singular"):
        fid = frechet_distance(np.zeros(3), np.diag(s1), np.zeros(3), np.diag(s2))
    assert fid == pytest.approx((s1 + s2 - 2 * np.sqrt(s1 * s2)).sum(), abs=1e-2)


def test_fid_of_features_in_a_common_subspace():
    """Fewer informative directions than dimensions, as with few images and wide features: rank-2 covariances."""
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(2, 6))
    a, b = rng.normal(size=(40, 2)) @ basis, (rng.normal(size=(40, 2)) + 0.5) @ basis
    expected = _frechet_by_eigendecomposition(*feature_statistics(a), *feature_statistics(b))
    assert fid_from_features(a, b) == pytest.approx(expected, abs=1e-4)


def test_a_covariance_that_is_not_psd_raises():
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


# --- Kernel Inception distance ----------------------------------------------------------------------------------


def _direct_unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The polynomial-kernel unbiased MMD^2, one kernel evaluation at a time."""
    m, D = x.shape

    def k(u, v):
        return (u @ v / D + 1) ** 3

    within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    within_y = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (within_x + within_y) / (m * (m - 1)) - 2 * across / m**2


def test_kid_matches_a_direct_computation_when_a_subset_is_the_whole_set():
    """subset_size = 1000 is clipped to the 12 points, so every subset is the whole set in another order."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.3
    mean, std = kernel_inception_distance(a, b, subsets=3, generator=torch.Generator().manual_seed(0))
    assert mean == pytest.approx(_direct_unbiased_mmd2(a, b), rel=1e-10)
    assert std == pytest.approx(0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 1000, 16, generator=g)
    same_mean, same_std = kernel_inception_distance(a, b, subsets=50, subset_size=500, generator=g)
    shifted_mean, shifted_std = kernel_inception_distance(a, b + 0.5, subsets=50, subset_size=500, generator=g)
    assert abs(same_mean) < 3 * same_std and abs(same_mean) < 0.01
    # E (x . y / D) grows by 0.25 per axis, so the shifted MMD^2 is of order 1.
    assert shifted_mean > 0.5 and shifted_mean > 20 * shifted_std


# --- Inception score --------------------------------------------------------------------------------------------


def test_confident_predictions_with_equal_class_frequencies_score_the_number_of_classes():
    K = 10
    one_hot = torch.eye(K)[torch.arange(200) % K]  # every chunk of 20 holds each class twice
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(K, rel=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_identical_predictions_score_one():
    p = torch.tensor([0.1, 0.6, 0.3]).expand(100, 3)
    mean, std = inception_score(p, splits=5)
    assert mean == pytest.approx(1, abs=1e-12) and std == pytest.approx(0, abs=1e-12)


def test_inception_score_of_half_confident_half_uniform_predictions():
    """p(y) = (1/2) e_0 + (1/2) u; the one-hot half has KL = -log p(0), the uniform half KL(u || p(y))."""
    K = 4
    predictions = torch.cat([torch.eye(K)[[0]].expand(50, K), torch.full((50, K), 1 / K)])
    p0, p_other = 0.5 + 0.5 / K, 0.5 / K
    kl_uniform = (math.log((1 / K) / p0) + (K - 1) * math.log((1 / K) / p_other)) / K
    expected = math.exp((-math.log(p0) + kl_uniform) / 2)
    assert inception_score(predictions, splits=1)[0] == pytest.approx(expected, rel=1e-12)


def test_inception_score_from_logits_equals_from_probabilities():
    logits = 3 * torch.randn(500, 7, generator=torch.Generator().manual_seed(6))
    from_logits = inception_score(logits, from_logits=True)
    from_probabilities = inception_score(logits.double().softmax(dim=1))
    assert from_logits == pytest.approx(from_probabilities, rel=1e-12)
    assert 1 < from_logits[0] < 7


def test_inception_score_rejects_logits_passed_as_probabilities():
    with pytest.raises(ValueError, match="from_logits"):
        inception_score(torch.randn(20, 4), splits=2)


# --- Precision, recall, density, coverage -----------------------------------------------------------------------


@pytest.mark.parametrize("D", [2, 16])
@pytest.mark.parametrize("max_block_elements", [2**23, 1000])  # one block, and blocks of a few rows
def test_prdc_matches_the_reference_package(D, max_block_elements):
    rng = np.random.default_rng(D)
    real, fake = rng.normal(size=(300, D)), 1.2 * rng.normal(size=(250, D)) + 0.3
    expected = compute_prdc(real_features=real, fake_features=fake, nearest_k=5)
    result = prdc(torch.from_numpy(real), fake, k=5, max_block_elements=max_block_elements)
    assert result == pytest.approx({name: float(value) for name, value in expected.items()}, abs=1e-6)


def test_prdc_of_identical_sets_is_perfect():
    """Each real ball holds its centre and k - 1 nearer neighbours, so the fakes fill k balls on average."""
    real = torch.randn(400, 8, generator=torch.Generator().manual_seed(7))
    assert prdc(real, real.clone()) == pytest.approx(dict(precision=1, recall=1, density=1, coverage=1), abs=1e-12)


def test_prdc_of_far_apart_sets_is_zero():
    real = torch.randn(200, 4, generator=torch.Generator().manual_seed(8))
    assert prdc(real, real[:150] + 100) == dict(precision=0, recall=0, density=0, coverage=0)


# --- Isotropy ---------------------------------------------------------------------------------------------------


def test_isotropy_of_standard_noise_is_one_and_scales_quadratically():
    eps = torch.randn(256, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    assert isotropy(eps) == pytest.approx(1, abs=0.015)  # sampling std is sqrt(2 / (256 * 768)) = 0.003
    assert isotropy(3 * eps) == pytest.approx(9 * isotropy(eps), rel=1e-6)
    assert isotropy(torch.zeros(4, 3, 8, 8)) == 0


def test_forward_isotropy_matches_monte_carlo_for_the_ddpm_process():
    """Data ``N(2, 1)`` per entry has second moment 5; noising pulls the isotropy from 5 towards 1."""
    g = torch.Generator().manual_seed(11)
    ddpm = DDPM(T=1000)
    x0 = 2 + torch.randn(2000, 64, generator=g, dtype=torch.float64)
    expected = forward_isotropy(ddpm.alpha_bar, second_moment=5.0)
    for step in (0, 100, 300, 999):
        t = torch.full((len(x0),), step)
        x_t = ddpm.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        assert isotropy(x_t) == pytest.approx(float(expected[step]), rel=0.01)
    assert expected[0] == pytest.approx(5, abs=0.01) and expected[-1] == pytest.approx(1, abs=1e-3)


# --- Negative log-likelihood on toy data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["gaussian", "eight_gaussians", "twenty_five_gaussians", "checkerboard", "central_banana"]
)
def test_samples_of_the_density_score_its_entropy(name):
    data = density(name)
    entropy = negative_log_likelihood(data.sample(100_000, torch.Generator().manual_seed(12)), data)
    samples = data.sample(5_000, torch.Generator().manual_seed(13))
    # -log p of one sample has std ~1 for these sets, so 5000 samples pin the mean to ~0.015.
    assert negative_log_likelihood(samples, data) == pytest.approx(entropy, abs=0.06)


def test_entropy_estimates_agree_with_closed_forms():
    gaussian, checkerboard = density("gaussian"), density("checkerboard")
    g = torch.Generator().manual_seed(14)
    assert negative_log_likelihood(gaussian.sample(100_000, g), gaussian) == pytest.approx(
        1 + math.log(2 * math.pi), abs=0.02
    )
    assert negative_log_likelihood(checkerboard.sample(1000, g), checkerboard) == pytest.approx(math.log(8), rel=1e-6)


def test_collapse_onto_the_modes_scores_below_the_entropy():
    """All samples at the 8 centres: NLL = log 8 + log(2 pi 0.1^2), one nat below the entropy; the NLL alone
    would call this collapsed sampler better than the data itself."""
    data = density("eight_gaussians")
    at_centres = data.means.repeat(100, 1)
    expected = math.log(8) + math.log(2 * math.pi * 0.1**2)
    assert negative_log_likelihood(at_centres, data) == pytest.approx(expected, rel=1e-6)  # float32 means
    samples = data.sample(10_000, torch.Generator().manual_seed(15))
    assert negative_log_likelihood(samples, data) == pytest.approx(expected + 1, abs=0.05)


def test_a_sample_off_the_support_makes_the_nll_infinite():
    assert negative_log_likelihood(torch.tensor([[0.5, 0.5], [1.5, 0.5]]), density("checkerboard")) == math.inf
