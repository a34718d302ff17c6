"""Iso-Diffusion's isotropy penalty and loss against the closed forms that chapter 3 derives."""

import pytest
import torch
from torch import nn

from diffbook.diffusion import DDPM, EDM, Denoiser
from diffbook.metrics import forward_isotropy, isotropy, predicted_noise_isotropy
from diffbook.objectives import DenoisingLoss, IsoLoss, isotropy_penalty, isotropy_per_sample


def _unit_norm_rows(batch: int, n: int, seed: int) -> torch.Tensor:
    """Rows with ``||z_i||^2 = n`` exactly: random signs of ones."""
    signs = torch.randint(2, (batch, n), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return signs.double()


@pytest.mark.parametrize("form", ["batch", "sample"])
def test_penalty_of_zero_prediction_is_one(form):
    assert isotropy_penalty(torch.zeros(8, 3, 4, 4), form).item() == 1.0


@pytest.mark.parametrize("form", ["batch", "sample"])
@pytest.mark.parametrize("c", [0.0, 0.5, 1.0, 1.3, 2.0])
def test_penalty_of_scaled_unit_norm_noise_is_c_squared_minus_one_squared(form, c):
    z = _unit_norm_rows(16, 12, seed=0)
    assert isotropy_penalty(c * z, form).item() == pytest.approx((c**2 - 1) ** 2, abs=1e-12)


def test_per_sample_minus_per_batch_is_the_variance_of_the_isotropies():
    z = torch.randn(32, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * torch.rand(32, 1)
    r = isotropy_per_sample(z)
    difference = isotropy_penalty(z, "sample") - isotropy_penalty(z, "batch")
    assert difference.item() == pytest.approx(r.var(unbiased=False).item(), abs=1e-12)


@pytest.mark.parametrize(("form", "expected"), [("batch", lambda B, n: 2 / (B * n)), ("sample", lambda B, n: 2 / n)])
def test_penalty_of_true_gaussian_noise_is_two_over_bn_or_two_over_n(form, expected):
    """``r_i = chi^2_n / n`` has variance ``2/n``: the per-batch mean has variance ``2/(Bn)``."""
    repeats, B, n = 4000, 16, 8
    eps = torch.randn(repeats, B, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    penalties = torch.stack([isotropy_penalty(batch, form) for batch in eps])
    standard_error = penalties.std() / repeats**0.5
    assert abs(penalties.mean().item() - expected(B, n)) < 4 * standard_error.item()


def test_in_two_dimensions_per_sample_form_penalises_true_noise_as_much_as_zero():
    eps = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert isotropy_penalty(eps, "sample").item() == pytest.approx(1.0, abs=0.02)
    assert isotropy_penalty(eps, "batch").item() < 1e-4


def test_bad_form_and_negative_weight_are_errors():
    with pytest.raises(ValueError, match="form"):
        isotropy_penalty(torch.zeros(2, 2), "global")
    with pytest.raises(ValueError, match="form"):
        IsoLoss(weight=0.1, form="global")
    with pytest.raises(ValueError, match="weight"):
        IsoLoss(weight=-0.1)


class _RandomNet(nn.Module):
    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(dim + 1, dim)

    def forward(self, x, noise_labels, class_labels=None):
        return self.linear(torch.cat([x, noise_labels[:, None] / 1000], dim=1))


@pytest.mark.parametrize("process", [DDPM(), DDPM(prediction="v"), EDM()])
def test_weight_zero_reproduces_the_denoising_loss_and_gradients_bit_for_bit(process):
    torch.manual_seed(0)
    model = Denoiser(_RandomNet(), process)
    x0 = torch.randn(64, 3)
    losses, grads = [], []
    for objective in (DenoisingLoss(), IsoLoss(weight=0.0)):
        model.zero_grad()
        loss = objective(model, x0, torch.Generator().manual_seed(5))["loss"]
        loss.backward()
        losses.append(loss)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.equal(losses[0], losses[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_eps_pred_of_an_eps_network_is_its_raw_output():
    """For DDPM's eps parametrisation ``(x - D(x)) / sigma`` is the network output itself."""
    torch.manual_seed(1)
    model, x0 = Denoiser(_RandomNet(), DDPM()), torch.randn(32, 3)
    out = IsoLoss(weight=1.0)(model, x0, torch.Generator().manual_seed(6))
    generator = torch.Generator().manual_seed(6)  # replay the objective's draws: noise levels, then noise
    sigma = model.process.sample_sigma(len(x0), generator=generator)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
    raw, _ = model.raw(x, sigma)
    assert out["eps_pred"].requires_grad
    torch.testing.assert_close(out["eps_pred"], raw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["isotropy"], raw.detach().square().mean(dim=1))
    torch.testing.assert_close(out["penalty"], (raw.detach().square().mean() - 1).square())


class _GaussianDenoiserGain(nn.Module):
    """``eps_theta(x_t, t) = k * E[eps | x_t]`` for ``N(0, I)`` data, where ``E[eps | x_t] = sqrt(1 - a_t) x_t``.

    One learnable gain ``k`` for every step: the population optimum of the per-batch Iso loss solves
    ``k (1 - 2 lambda (1 - k^2 m*)) = 1`` with ``m* = E_t (1 - a_t)`` (derived in chapter 3).
    """

    def __init__(self, process: DDPM) -> None:
        super().__init__()
        self.alpha_bar = process.alpha_bar.float()
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, x_t, noise_labels, class_labels=None):
        alpha_bar = self.alpha_bar[noise_labels.round().long()]
        return self.gain * (1 - alpha_bar).sqrt()[:, None] * x_t


def test_exact_denoiser_of_gaussian_data_has_isotropy_below_one():
    """m* = 1 - mean_t alpha_bar_t = 0.7245 for the linear schedule (chapter 3): the optimum is not isotropic."""
    process = DDPM()
    model = Denoiser(_GaussianDenoiserGain(process), process)
    out = IsoLoss(weight=0.0)(model, torch.randn(200_000, 2), torch.Generator().manual_seed(7))
    assert out["isotropy"].mean().item() == pytest.approx(0.7245, abs=0.005)
    assert (1 - process.alpha_bar.mean()).item() == pytest.approx(0.7245, abs=5e-4)


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.3])
def test_trained_gain_reaches_the_population_optimum_c(weight):
    """Gradient descent on the Iso loss pulls the exact denoiser up to ``c eps*`` with the predicted ``c``."""
    process = DDPM()
    model = Denoiser(_GaussianDenoiserGain(process), process)
    objective = IsoLoss(weight=weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(8)
    gains = []
    for step in range(600):
        loss = objective(model, torch.randn(4096, 2, generator=generator), generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 400:
            gains.append(model.net.gain.item())
    m_star = (1 - process.alpha_bar.mean()).item()
    c = _solve_gain(weight, m_star)
    assert sum(gains) / len(gains) == pytest.approx(c, abs=0.01)
    if weight == 0.3:
        assert c == pytest.approx(1.091, abs=0.002)  # chapter 3's table of c


def _solve_gain(weight: float, m_star: float) -> float:
    """The root ``c > 0`` of ``c (1 - 2 lambda (1 - c^2 m*)) = 1``, by bisection on [0.5, 2]."""
    lo, hi = 0.5, 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid * (1 - 2 * weight * (1 - mid**2 * m_star)) < 1 else (lo, mid)
    return (lo + hi) / 2


def test_forward_isotropy_matches_the_closed_form_at_every_step():
    """Data with second moment exactly 3 (every entry +-sqrt(3)); one noise draw per sample and step."""
    process = DDPM(T=1000)
    x0 = _unit_norm_rows(64, 32, seed=9) * 3**0.5
    eps = torch.randn(process.T, *x0.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    alpha_bar = process.alpha_bar[:, None, None]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    measured = x_t.square().mean(dim=(1, 2))
    expected = forward_isotropy(process.alpha_bar, second_moment=3.0)
    # Var of the mean over 64 * 32 entries of (sqrt(a) x0 + sqrt(1 - a) eps)^2 is at most 2 (1 + 2 * 3) / 2048.
    torch.testing.assert_close(measured, expected, atol=5 * (14 / 2048) ** 0.5, rtol=0)
    assert expected[0].item() == pytest.approx(3, abs=1e-3) and expected[-1].item() == pytest.approx(1, abs=1e-4)


def test_predicted_noise_isotropy_of_the_exact_gaussian_denoiser_is_one_minus_alpha_bar():
    """N(0, I) data: D(x; sigma) = x / (1 + sigma^2), so E||eps_hat||^2 / n = sigma^2 / (1 + sigma^2)."""
    process = DDPM()
    steps = [0, 50, 200, 500, 999]
    sigmas = process.sigmas[steps]
    x0 = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    curve = predicted_noise_isotropy(
        lambda x, s: x / (1 + s[:, None] ** 2), x0, sigmas, torch.Generator().manual_seed(12)
    )
    torch.testing.assert_close(curve, 1 - process.alpha_bar[steps], atol=0.02, rtol=0)


def test_isotropy_per_sample():
    signs = torch.randint(2, (4, 2, 3), generator=torch.Generator().manual_seed(10)) * 2 - 1
    z = torch.arange(1.0, 5.0)[:, None, None] * signs  # sample i has every entry equal to +-(i + 1)
    torch.testing.assert_close(isotropy_per_sample(z), torch.tensor([1.0, 4.0, 9.0, 16.0]))
    assert isotropy(z) == pytest.approx(7.5)
