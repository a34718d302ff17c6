"""Processes, parametrisations and the denoiser wrapper, checked against closed forms."""

import itertools
import math

import pytest
import torch

from diffbook.diffusion import DDPM, EDM, PREDICTIONS, VE, VP, Denoiser, convert, cosine_betas, from_x0, to_x0


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _noisy(alpha, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    return x0, eps, alpha * x0 + sigma * eps


@pytest.mark.parametrize(("alpha", "sigma"), [(0.8, 0.6), (1.0, 3.0), (0.05, 0.9987)])
def test_conversions_invert_to_float_precision(alpha, sigma):
    x0, eps, x_t = _noisy(alpha, sigma)
    truth = {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0, "score": -eps / sigma}
    for kind in PREDICTIONS:
        torch.testing.assert_close(to_x0(truth[kind], kind, x_t, alpha, sigma), x0, rtol=1e-10, atol=1e-10)
    for source, target in itertools.product(PREDICTIONS, PREDICTIONS):
        torch.testing.assert_close(
            convert(truth[source], source, target, x_t, alpha, sigma), truth[target], rtol=1e-9, atol=1e-9
        )


def test_unknown_prediction_is_an_error():
    x0, _, x_t = _noisy(0.8, 0.6)
    with pytest.raises(ValueError, match="unknown prediction"):
        to_x0(x0, "mu", x_t, 0.8, 0.6)


def test_linear_schedule_is_ddpm_at_1000_steps_and_the_same_process_at_other_step_counts():
    torch.testing.assert_close(DDPM().betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    # Rescaled betas keep the continuous-time process up to log(1 - beta) ~ -beta, which is coarser at small T.
    for T, tolerance in ((500, 0.02), (100, 0.1)):
        coarse = DDPM(T=T)
        assert coarse.alpha_bar.shape == (T,)
        assert math.isclose(math.log(coarse.alpha_bar[-1]), math.log(DDPM().alpha_bar[-1]), rel_tol=tolerance)


def test_cosine_schedule_follows_its_closed_form():
    T, s = 1000, 0.008
    alpha_bar = torch.cumprod(1 - cosine_betas(T), 0)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    # Agreement everywhere the 0.999 clip on beta is inactive (all but the very last steps).
    torch.testing.assert_close(alpha_bar[:-5], f[:-5], rtol=1e-9, atol=1e-12)
    assert cosine_betas(T).max() <= 0.999


def test_forward_noising_has_the_stated_moments():
    process = DDPM()
    n, mean, std = 200_000, 0.7, 0.3
    g = torch.Generator().manual_seed(1)
    x0 = mean + std * torch.randn(n, 1, generator=g)
    for t in (0, 100, 500, 999):
        x_t = process.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g))
        ab = float(process.alpha_bar[t])
        assert abs(x_t.mean() - ab**0.5 * mean) < 5e-3
        assert abs(x_t.var() - (ab * std**2 + 1 - ab)) < 1e-2


def test_sigma_to_t_is_exact_on_the_grid_and_monotone_between():
    process = DDPM(T=50)
    torch.testing.assert_close(process.sigma_to_t(process.sigmas), torch.arange(50, dtype=torch.float64))
    between = torch.exp(torch.linspace(process.sigmas.log()[0], process.sigmas.log()[-1], 500))
    assert (process.sigma_to_t(between).diff() > 0).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_scalings_turn_the_true_target_into_x0(prediction):
    """``c_skip x + c_out F = x0`` when ``F`` is the true eps / x0 / v of the VP sample ``c_in x``."""
    process = DDPM(prediction=prediction)
    t = torch.tensor([0, 10, 300, 999])
    sigma = process.sigmas[t]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, generator=g)
    x = x0 + sigma[:, None] * eps
    c_skip, c_out, c_in, c_noise = process.scalings(sigma)
    ab = process.alpha_bar[t][:, None]
    x_t = c_in[:, None] * x
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    target = from_x0(x0, prediction, x_t, ab.sqrt(), (1 - ab).sqrt())
    torch.testing.assert_close(c_skip[:, None] * x + c_out[:, None] * target, x0)
    torch.testing.assert_close(c_noise, t.double())


def test_edm_preconditioning_gives_unit_variance_input_and_target():
    edm = EDM(sigma_data=0.5)
    g = torch.Generator().manual_seed(0)
    n = 400_000
    for sigma in (0.01, 0.5, 3.0, 80.0):
        x0 = 0.5 * torch.randn(n, generator=g)
        x = x0 + sigma * torch.randn(n, generator=g)
        c_skip, c_out, c_in, c_noise = edm.scalings(torch.tensor(sigma))
        assert abs((c_in * x).std() - 1) < 5e-3
        assert abs(((x0 - c_skip * x) / c_out).std() - 1) < 5e-3
        assert math.isclose(c_noise, math.log(sigma) / 4)


def test_vp_sigma_and_its_inverse_agree():
    vp = VP()
    t = torch.linspace(1e-5, 1, 101)
    torch.testing.assert_close(vp.sigma_inv(vp.sigma(t)), t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("process", [DDPM(), EDM(), VP(), VE()], ids=["ddpm", "edm", "vp", "ve"])
def test_training_noise_levels_lie_in_the_process_range(process):
    sigma = process.sample_sigma(10_000, generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (10_000,)
    if not isinstance(process, EDM):  # EDM's log-normal has unbounded support by design
        assert sigma.min() >= process.sigma_min * (1 - 1e-6) and sigma.max() <= process.sigma_max * (1 + 1e-6)


def test_edm_training_sigma_is_lognormal():
    sigma = EDM().sample_sigma(200_000, generator=torch.Generator().manual_seed(0))
    assert abs(sigma.log().mean() + 1.2) < 0.01 and abs(sigma.log().std() - 1.2) < 0.01


class _ConstantNet(torch.nn.Module):
    """Outputs a fixed tensor: lets a test set F and read D."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, noise_labels, class_labels=None):
        return self.value.expand_as(x)


def test_denoiser_combines_scalings_with_the_raw_output():
    F = torch.tensor([0.3, -1.2])
    model = Denoiser(_ConstantNet(F), EDM())
    x = torch.tensor([[1.0, 2.0]])
    c_skip, c_out, _, _ = EDM().scalings(torch.tensor([2.0]))
    torch.testing.assert_close(model(x, 2.0), c_skip * x + c_out * F)


class _LinearNet(torch.nn.Module):
    """``F(x; c) = 0.3 x + 0.1 c``: depends on the input and the noise label, so both scalings show."""

    def forward(self, x, noise_labels, class_labels=None):
        return 0.3 * x + 0.1 * noise_labels.reshape(-1, *[1] * (x.ndim - 1))


@pytest.mark.parametrize(
    "process",
    [EDM(), DDPM(prediction="eps"), DDPM(prediction="x0"), DDPM(prediction="v", zero_terminal_snr=True)],
    ids=["edm", "ddpm-eps", "ddpm-x0", "ddpm-v-ztsnr"],
)
def test_a_float_noise_level_gives_what_the_same_level_as_a_batch_gives(process):
    # Samplers pass floats, whose scalings are computed once on the host; losses pass (B,) tensors.
    model = Denoiser(_LinearNet(), process)
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    for sigma in (0.05, 1.7, 30.0):
        batch = torch.full((3,), sigma)
        torch.testing.assert_close(model(x, sigma), model(x, batch))
        torch.testing.assert_close(model.forward_vp(x, sigma), model.forward_vp(x, batch))
    if isinstance(process, DDPM) and process.zero_terminal_snr:
        inf = torch.full((3,), math.inf)
        torch.testing.assert_close(model.forward_vp(x, math.inf), model.forward_vp(x, inf))


class _LabelledNet(torch.nn.Module):
    """``F(x; c, y) = 0.3 x + 0.1 c + 0.05 y``: the input, the noise label and the class label all show in ``D``."""

    def forward(self, x, noise_labels, class_labels=None):
        shape = (-1, *[1] * (x.ndim - 1))
        return 0.3 * x + 0.1 * noise_labels.reshape(shape) + 0.05 * class_labels.to(x.dtype).reshape(shape)


@pytest.mark.parametrize(
    "process",
    [EDM(), VP(), VE(), DDPM(prediction="eps"), DDPM(prediction="x0"), DDPM(prediction="v", zero_terminal_snr=True)],
    ids=["edm", "vp", "ve", "ddpm-eps", "ddpm-x0", "ddpm-v-ztsnr"],
)
def test_the_fast_denoiser_computes_edms_equation_as_written(process):
    """``forward`` and ``forward_vp`` (kept float scalings, skipped multiplications, fused adds) against
    ``reference``, ``D_x = c_skip * x + c_out * F_x`` with fresh tensor scalings (EDM, Eq. 7 and Table 1)."""
    model = Denoiser(_LabelledNet(), process)
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 9])
    lo, hi = process.sigma_min, process.sigma_max
    for sigma in (lo, math.sqrt(lo * hi), hi):
        for level in (sigma, torch.full((3,), sigma)):
            for coordinates, fast in (("ve", model.forward), ("vp", model.forward_vp)):
                expected = model.reference(x, level, labels, coordinates)
                torch.testing.assert_close(fast(x, level, labels), expected, rtol=1e-12, atol=1e-12)
