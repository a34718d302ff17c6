import math

import pytest
import torch

from diffbook.data.toy2d import (
    TOY_DATASETS,
    Banana,
    Checkerboard,
    GaussianMixture,
    density,
    eight_gaussians_mixture,
    gaussian,
    has_density,
    sample_toy,
    twenty_five_gaussians_mixture,
)


def grid(half_width: float, step: float) -> torch.Tensor:
    """Cell centres of a square grid on [-half_width, half_width]^2: (M, 2) float64."""
    ticks = torch.arange(-half_width + step / 2, half_width, step, dtype=torch.float64)
    return torch.cartesian_prod(ticks, ticks)


def integrate(log_prob, half_width: float, step: float) -> float:
    return (log_prob(grid(half_width, step)).exp().sum() * step**2).item()


def three_component_mixture(dtype=torch.float64) -> GaussianMixture:
    means = torch.tensor([[-1.0, 0.5], [1.5, 1.0], [0.0, -1.5]], dtype=dtype)
    return GaussianMixture(
        means, torch.tensor([0.3, 0.5, 0.4], dtype=dtype), torch.tensor([0.2, 0.3, 0.5], dtype=dtype)
    )


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_every_set_is_a_reproducible_cloud_of_a_few_units(name):
    x = sample_toy(name, 2000, seed=3)
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, sample_toy(name, 2000, seed=3))
    assert not torch.equal(x, sample_toy(name, 2000, seed=4))
    # The scale convention of the module: roughly centred, spread over a few units.
    assert x.mean(0).abs().max() < 0.3
    assert x.std(0).min() > 0.5 and x.std(0).max() < 2.5


def test_eight_gaussians_lie_on_a_ring_of_radius_two():
    radii = sample_toy("eight_gaussians", 5000).norm(dim=1)
    assert (radii - 2).abs().max() < 0.6
    assert radii.mean() == pytest.approx(2.0, abs=0.01)


def test_two_moons_are_standardised():
    x = sample_toy("two_moons", 100_000).double()
    torch.testing.assert_close(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(2, dtype=torch.float64), atol=0.01, rtol=0)


def test_circles_have_radii_one_and_two():
    radii = sample_toy("circles", 4000).norm(dim=1)
    inner, outer = radii[radii < 1.5], radii[radii >= 1.5]
    assert len(inner) == len(outer) == 2000
    assert inner.mean() == pytest.approx(1.0, abs=0.02) and outer.mean() == pytest.approx(2.0, abs=0.02)


@pytest.mark.parametrize("name", ["gaussian", "eight_gaussians", "twenty_five_gaussians", "checkerboard"])
def test_sample_toy_draws_from_the_closed_form_object(name):
    expected = density(name).sample(500, torch.Generator().manual_seed(7))
    assert torch.equal(sample_toy(name, 500, seed=7), expected)


def test_density_lookup():
    assert isinstance(density("eight_gaussians"), GaussianMixture)
    torch.testing.assert_close(density("twenty_five_gaussians").means, twenty_five_gaussians_mixture().means)
    assert has_density("checkerboard") and not has_density("two_moons")
    with pytest.raises(ValueError, match="no closed-form density.*eight_gaussians"):
        density("two_moons")


def test_unknown_name_lists_the_valid_ones_and_suggests_the_closest():
    with pytest.raises(ValueError) as error:
        sample_toy("two_moon", 10)
    message = str(error.value)
    assert "Did you mean 'two_moons'?" in message
    assert all(name in message for name in TOY_DATASETS)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_mixture_log_prob_integrates_to_one(sigma):
    mixture = eight_gaussians_mixture()
    assert integrate(lambda x: mixture.log_prob(x, sigma), half_width=4.0, step=0.025) == pytest.approx(1, abs=1e-4)


def test_mixture_log_prob_matches_torch_distributions_in_five_dimensions():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    stds = torch.tensor([0.5, 1.0, 0.8, 1.3], dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(weights),
        torch.distributions.Independent(torch.distributions.Normal(means, stds[:, None].expand(4, 5)), 1),
    )
    x = 2 * torch.randn(100, 5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(GaussianMixture(means, stds, weights).log_prob(x), reference.log_prob(x))


def test_noised_mixture_is_log_prob_at_sigma():
    mixture, x = three_component_mixture(), torch.randn(50, 2, dtype=torch.float64)
    torch.testing.assert_close(mixture.noised(0.7).log_prob(x), mixture.log_prob(x, 0.7))


@pytest.mark.parametrize("sigma", [0.0, 0.3, "per-sample (N,)", "per-sample (N, 1)"])
def test_score_is_the_gradient_of_the_noised_log_prob(sigma):
    mixture = three_component_mixture()
    x = (2 * torch.randn(64, 2, dtype=torch.float64)).requires_grad_()
    if sigma == "per-sample (N,)":
        sigma = torch.linspace(0.01, 3.0, 64, dtype=torch.float64)
    elif sigma == "per-sample (N, 1)":
        sigma = torch.linspace(0.01, 3.0, 64, dtype=torch.float64)[:, None]
    (gradient,) = torch.autograd.grad(mixture.log_prob(x, sigma).sum(), x)
    torch.testing.assert_close(mixture.score(x.detach(), sigma), gradient)


def test_per_sample_sigma_matches_one_sigma_at_a_time():
    mixture, x = three_component_mixture(), torch.randn(3, 2, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    one_at_a_time = torch.cat([mixture.denoiser(x[i : i + 1], s.item()) for i, s in enumerate(sigma)])
    torch.testing.assert_close(mixture.denoiser(x, sigma), one_at_a_time)
    torch.testing.assert_close(mixture.denoiser(x, sigma[:, None]), one_at_a_time)


def test_single_gaussian_denoiser_is_the_linear_shrinkage():
    mean, std, sigma = torch.tensor([1.0, -2.0]), 0.7, 1.3
    x = torch.randn(20, 2)
    expected = mean + std**2 / (std**2 + sigma**2) * (x - mean)
    torch.testing.assert_close(gaussian(tuple(mean.tolist()), std).denoiser(x, sigma), expected)


def test_mixture_denoiser_matches_a_monte_carlo_posterior_mean():
    mixture, sigma = eight_gaussians_mixture(), 0.8
    generator = torch.Generator().manual_seed(0)
    x0 = mixture.sample(400_000, generator).double()
    queries = torch.tensor([[0.0, 0.0], [1.5, 0.3], [-2.5, 1.0], [0.5, -2.0]], dtype=torch.float64)
    # E[x0 | x] = E[x0 N(x; x0, sigma^2 I)] / E[N(x; x0, sigma^2 I)], both estimated on the same draws.
    weights = (-0.5 * torch.cdist(queries, x0).square() / sigma**2).softmax(dim=1)
    torch.testing.assert_close(mixture.denoiser(queries, sigma), weights @ x0, atol=0.01, rtol=0)


def test_denoiser_keeps_the_input_dtype_and_is_identity_without_noise():
    x = torch.randn(10, 2)
    assert eight_gaussians_mixture().denoiser(x, 0.5).dtype == torch.float32
    torch.testing.assert_close(eight_gaussians_mixture().denoiser(x, 0.0), x)


def test_posterior_weights_are_responsibilities():
    mixture = three_component_mixture()
    weights = mixture.posterior_weights(torch.randn(30, 2, dtype=torch.float64), 0.5)
    torch.testing.assert_close(weights.sum(1), torch.ones(30, dtype=torch.float64))
    at_means = eight_gaussians_mixture().posterior_weights(eight_gaussians_mixture().means)
    torch.testing.assert_close(at_means, torch.eye(8))


def test_mixture_samples_have_the_right_weights_means_and_stds():
    mixture, n = three_component_mixture(), 200_000
    x, component = mixture.sample_with_components(n, torch.Generator().manual_seed(1))
    fractions = torch.bincount(component, minlength=3).double() / n
    torch.testing.assert_close(fractions, mixture.weights, atol=5e-3, rtol=0)
    for k in range(3):
        members = x[component == k]
        torch.testing.assert_close(members.mean(0), mixture.means[k], atol=0.01, rtol=0)
        torch.testing.assert_close(members.std(0), mixture.stds[k].expand(2), atol=0.01, rtol=0)


def test_mixture_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="expected means"):
        GaussianMixture(torch.zeros(3, 2), torch.ones(2), torch.ones(3))


def test_checkerboard_log_prob_integrates_to_one_and_covers_its_samples():
    board = Checkerboard()
    assert integrate(board.log_prob, half_width=3.0, step=0.01) == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(board.log_prob(board.sample(1000))).all()
    assert board.log_prob(torch.tensor([[-1.5, -1.5], [-0.5, -1.5], [2.5, 0.0]], dtype=torch.float64)).tolist() == [
        -math.log(8),
        -math.inf,
        -math.inf,
    ]


def test_banana_log_prob_integrates_to_one_and_has_mean_zero():
    banana = Banana()
    assert integrate(banana.log_prob, half_width=16.0, step=0.025) == pytest.approx(1.0, abs=1e-4)
    x = banana.sample(200_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=0.02, rtol=0)
