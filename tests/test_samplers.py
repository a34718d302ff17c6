"""Every sampler, driven by the exact denoiser of known data, must reproduce that data's distribution."""

import pytest
import torch

from diffbook.data import GaussianMixture
from diffbook.diffusion import DDPM, karras_sigmas
from diffbook.experiments import Experiment
from diffbook.samplers import (
    DDIMOptions,
    EDMOptions,
    RowNoise,
    Sampler,
    ddim_sample,
    ddpm_sample,
    edm_sample,
    generate,
    sample_seeds,
    timesteps,
)
from diffbook.samplers.ddpm import ddim_step, fast_ddim_step
from diffbook.samplers.edm import euler_step, fast_euler_step, fast_heun_step, heun_step

MEAN = torch.tensor([1.0, -0.5])
STD = 0.5
N = 20_000


def gaussian_denoiser(x, sigma):
    """``E[x0 | x0 + sigma n]`` for ``x0 ~ N(MEAN, STD^2 I)``: shrink towards the mean by ``s^2/(s^2+sigma^2)``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
    return MEAN + STD**2 / (STD**2 + sigma**2) * (x - MEAN)


def _noise(seed=0):
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _assert_gaussian(samples, mean_tol=0.02, std_rtol=0.03):
    assert torch.isfinite(samples).all()
    assert (samples.mean(0) - MEAN).abs().max() < mean_tol, samples.mean(0)
    assert (samples.std(0) / STD - 1).abs().max() < std_rtol, samples.std(0)


PROCESS = DDPM()
# Step counts are where each sampler's discretisation error on this Gaussian is below the tolerances
# (EDM's rho = 7 grid spends most of 18 steps below sigma = 0.1, so Heun needs about 50 here).
SAMPLERS = {
    "ddpm-large-1000": lambda g: ddpm_sample(gaussian_denoiser, PROCESS, _noise(), generator=g),
    "ddpm-large-250": lambda g: ddpm_sample(gaussian_denoiser, PROCESS, _noise(), 250, "large", generator=g),
    "ddpm-small-1000": lambda g: ddpm_sample(gaussian_denoiser, PROCESS, _noise(), 1000, "small", generator=g),
    "ddim-eta0-200": lambda g: ddim_sample(gaussian_denoiser, PROCESS, _noise(), 200),
    "ddim-trailing-200": lambda g: ddim_sample(gaussian_denoiser, PROCESS, _noise(), 200, spacing="trailing"),
    "edm-heun-50": lambda g: edm_sample(gaussian_denoiser, _noise(), karras_sigmas(50)),
    "edm-euler-200": lambda g: edm_sample(gaussian_denoiser, _noise(), karras_sigmas(200), solver="euler"),
    "edm-heun-churn-64": lambda g: edm_sample(
        gaussian_denoiser, _noise(), karras_sigmas(64), S_churn=30, S_min=0.05, S_max=50, generator=g
    ),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_exact_denoiser_reproduces_the_gaussian(name):
    out = SAMPLERS[name](torch.Generator().manual_seed(1))
    _assert_gaussian(out.samples)


def test_ddim_with_eta_one_is_ancestral_sampling_with_the_posterior_variance():
    x = _noise()[:256]
    ddim = ddim_sample(gaussian_denoiser, PROCESS, x, 50, eta=1.0, generator=torch.Generator().manual_seed(5))
    ddpm = ddpm_sample(gaussian_denoiser, PROCESS, x, 50, "small", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ddim.samples, ddpm.samples)


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("heun", 2)])
def test_deterministic_edm_samplers_converge_to_the_exact_flow_map_at_their_order(solver, order):
    """For Gaussian data the probability-flow ODE is linear: ``x(sigma) - mu`` scales as
    ``sqrt(s^2 + sigma^2)``, so each noise vector has a known destination. Doubling the steps must divide the
    error by about ``2^order``."""
    noise = _noise()[:512]
    exact = MEAN + (80 * noise - MEAN) * STD / (STD**2 + 80**2) ** 0.5
    errors = [
        (edm_sample(gaussian_denoiser, noise, karras_sigmas(n), solver=solver).samples - exact).abs().max()
        for n in (32, 64)
    ]
    assert 2**order * 0.8 < errors[0] / errors[1] < 2**order * 1.25


@pytest.mark.parametrize(
    ("run", "nfe"),
    [
        (lambda: ddpm_sample(gaussian_denoiser, PROCESS, _noise()[:4]), 1000),
        (lambda: ddpm_sample(gaussian_denoiser, PROCESS, _noise()[:4], steps=37), 37),
        (lambda: ddim_sample(gaussian_denoiser, PROCESS, _noise()[:4], steps=10), 10),
        (lambda: edm_sample(gaussian_denoiser, _noise()[:4], karras_sigmas(18)), 35),
        (lambda: edm_sample(gaussian_denoiser, _noise()[:4], karras_sigmas(40)), 79),
        (lambda: edm_sample(gaussian_denoiser, _noise()[:4], karras_sigmas(18), solver="euler"), 18),
    ],
)
def test_samplers_report_their_function_evaluations(run, nfe):
    assert run().nfe == nfe


def test_nfe_counts_real_denoiser_calls():
    calls = []

    def counting(x, sigma):
        calls.append(sigma)
        return gaussian_denoiser(x, sigma)

    out = edm_sample(counting, _noise()[:4], karras_sigmas(7))
    assert out.nfe == len(calls) == 13


def test_exact_score_reproduces_unequal_mixture_weights():
    """A 1D mixture with weights 0.6 / 0.3 / 0.1: the ODE must carry each mode's mass to that mode."""
    means, std = torch.tensor([-2.0, 0.0, 2.5]), 0.15
    weights = torch.tensor([0.6, 0.3, 0.1])

    def mixture_denoiser(x, sigma):
        var = std**2 + torch.as_tensor(sigma, dtype=x.dtype) ** 2
        logits = weights.log() - (x - means) ** 2 / (2 * var)
        resp = logits.softmax(dim=-1)
        return (resp * (means + std**2 / var * (x - means))).sum(-1, keepdim=True)

    noise = torch.randn(N, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    samples = edm_sample(mixture_denoiser, noise, karras_sigmas(32)).samples
    assigned = (samples - means).abs().argmin(dim=1)
    observed = torch.bincount(assigned, minlength=3) / N
    torch.testing.assert_close(observed, weights, atol=0.015, rtol=0)


def test_trajectory_runs_from_noise_to_the_samples():
    out = edm_sample(gaussian_denoiser, _noise()[:16], karras_sigmas(10), return_trajectory=True)
    assert len(out.trajectory) == 11 and out.trajectory_sigmas[0] == pytest.approx(80.0)
    torch.testing.assert_close(out.trajectory[-1], out.samples)
    # In VP coordinates the starting state is unit-variance noise, whatever sigma_max is.
    torch.testing.assert_close(out.trajectory[0], _noise()[:16] * 80 / (1 + 80**2) ** 0.5)
    assert ddim_sample(gaussian_denoiser, PROCESS, _noise()[:4], 5).trajectory is None


def test_karras_sigmas_endpoints_and_order():
    sigmas = karras_sigmas(18)
    assert sigmas.shape == (19,) and sigmas[-1] == 0
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.002)
    assert (sigmas.diff() < 0).all()
    with pytest.raises(ValueError):
        karras_sigmas(0)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timestep_spacings(spacing):
    ts = timesteps(1000, 50, spacing)
    assert len(ts) == 50 and ts == sorted(ts, reverse=True) and ts[-1] >= 0 and ts[0] <= 999
    assert {"linspace": (999, 0), "leading": (980, 0), "trailing": (999, 19)}[spacing] == (ts[0], ts[-1])
    with pytest.raises(ValueError, match="steps"):
        timesteps(10, 11, spacing)


@pytest.mark.parametrize(
    "run",
    [
        lambda D, y: ddpm_sample(D, PROCESS, _noise()[:4], steps=3, class_labels=y),
        lambda D, y: ddim_sample(D, PROCESS, _noise()[:4], steps=3, class_labels=y),
        lambda D, y: edm_sample(D, _noise()[:4], karras_sigmas(3), class_labels=y),
    ],
)
def test_class_labels_reach_the_denoiser_at_every_call(run):
    labels = torch.tensor([3, 1, 4, 1])
    seen = []

    def conditional(x, sigma, class_labels):
        seen.append(class_labels)
        return gaussian_denoiser(x, sigma)

    run(conditional, labels)
    assert seen and all(y is labels for y in seen)


@pytest.mark.parametrize(
    "run",
    [
        lambda D, x: edm_sample(D, x, karras_sigmas(40, 0.002, 80.0)),
        lambda D, x: ddim_sample(D, PROCESS, x, 100),
        lambda D, x: ddpm_sample(D, PROCESS, x, 250, generator=torch.Generator().manual_seed(4)),
    ],
    ids=["edm-heun", "ddim", "ddpm"],
)
def test_exact_denoiser_of_a_2d_mixture_reproduces_its_weights(run):
    """The package's closed-form mixture denoiser, driven through each sampler, puts 50 / 30 / 20 % of the
    samples on the three modes, each with the component's spread."""
    mixture = GaussianMixture(
        means=torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]]),
        stds=torch.tensor([0.2, 0.3, 0.15]),
        weights=torch.tensor([0.5, 0.3, 0.2]),
    )
    samples = run(mixture.denoiser, torch.randn(N, 2, generator=torch.Generator().manual_seed(5))).samples.float()
    nearest = torch.cdist(samples, mixture.means).argmin(dim=1)
    torch.testing.assert_close(torch.bincount(nearest, minlength=3) / N, mixture.weights, atol=0.015, rtol=0)
    for k in range(3):
        spread = samples[nearest == k].std(0) / mixture.stds[k]
        assert (spread - 1).abs().max() < 0.1, (k, spread)


@pytest.mark.parametrize(
    ("config", "overrides", "nfe"),
    [
        ("toy/edm", ["sample.steps=6"], 11),
        ("toy/edm", ["sample.sampler=euler", "sample.steps=3"], 3),
        ("toy/self_perceptual", ["sample.steps=7"], 7),
        ("toy/ddpm", ["sample.steps=5"], 5),
        ("toy/bcm", ["sample.steps=4"], 4),
    ],
)
def test_a_samplers_network_calls_are_counted_before_it_runs(config, overrides, nfe):
    experiment = Experiment.load(config, [*overrides, "network.init_from=null"])
    sampler = experiment.sampler
    calls = []
    model = experiment.build_model()
    model.net.register_forward_hook(lambda *_: calls.append(1))
    output = sampler(model, torch.randn(4, 2), None, torch.Generator().manual_seed(0))
    assert sampler.nfe == output.nfe == len(calls) == nfe


def test_the_fast_solver_steps_compute_edms_algorithm_as_written():
    """``lerp`` and the fused add of the sampler against EDM's Algorithm 2, lines 7-8 and 10-11, in float64."""
    x, denoised, x_next, denoised_next = torch.randn(
        4, 16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    for sigma, sigma_next in ((80.0, 57.3), (1.3, 0.9), (0.004, 0.002), (0.002, 0.0)):
        torch.testing.assert_close(
            fast_euler_step(x, denoised, sigma, sigma_next), euler_step(x, denoised, sigma, sigma_next)
        )
        if sigma_next > 0:
            torch.testing.assert_close(
                fast_heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next),
                heun_step(x, denoised, x_next, denoised_next, sigma, sigma_next),
            )


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_fast_ddim_step_computes_ddims_update_as_written(eta):
    """The substituted update of the sampler against DDIM's Eq. 12, in float64, on the trailing steps of a
    zero-terminal-SNR schedule (its first step has ``alpha_bar = 0``)."""
    process = DDPM(prediction="v", zero_terminal_snr=True)
    x, x0 = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = timesteps(process.T, 20, "trailing")
    for t, t_prev in zip(ts, [*ts[1:], None], strict=True):
        alpha_bar = float(process.alpha_bar[t])
        alpha_bar_prev = float(process.alpha_bar[t_prev]) if t_prev is not None else 1.0
        s = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
        torch.testing.assert_close(
            fast_ddim_step(x, x0, alpha_bar, alpha_bar_prev, s), ddim_step(x, x0, alpha_bar, alpha_bar_prev, s)
        )


# One seeded loop: sample k from seed k alone, whatever batch it is in


def _mixture_denoiser():
    mixture = GaussianMixture(
        torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), torch.tensor([0.3, 0.2]), torch.tensor([0.5, 0.5])
    )
    return mixture.denoiser


@pytest.mark.parametrize(
    "sampler",
    [Sampler("ddpm", 20), Sampler("ddim", 10, DDIMOptions(eta=1.0)), Sampler("euler", 8, EDMOptions(S_churn=20.0))],
    ids=["ddpm", "ddim-eta1", "euler-churn"],
)
def test_a_stochastic_samplers_sample_k_depends_on_seed_k_alone(sampler):
    assert sampler.stochastic
    denoiser, seeds = _mixture_denoiser(), [3, 8, 11, 20, 21]
    together = sample_seeds(denoiser, sampler, seeds, (2,), process=DDPM()).samples
    alone = torch.cat([sample_seeds(denoiser, sampler, [seed], (2,), process=DDPM()).samples for seed in seeds])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    batches = [samples for _, samples in generate(denoiser, sampler, seeds, (2,), batch_size=2, process=DDPM())]
    torch.testing.assert_close(torch.cat(batches), together, rtol=1e-5, atol=1e-6)
    again = sample_seeds(denoiser, sampler, seeds[::-1], (2,), process=DDPM()).samples
    torch.testing.assert_close(again, together.flip(0), rtol=1e-5, atol=1e-6)


def test_the_initial_noise_is_each_seeds_first_draw():
    seeds, process = [0, 5], DDPM()
    zero = lambda x, sigma: torch.zeros_like(x)  # noqa: E731
    out = sample_seeds(zero, Sampler("euler", 1), seeds, (3,), return_trajectory=True, process=process)
    expected = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
    # The path starts at the noise scaled to the first level, in variance-preserving coordinates.
    torch.testing.assert_close(out.trajectory[0], expected * process.sigma_max / (1 + process.sigma_max**2) ** 0.5)


def test_row_noise_draws_each_rows_generator_in_blocks():
    generators = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    noise = RowNoise(generators, block=4)
    draws = torch.stack([noise.draw(torch.empty(2, 3)) for _ in range(6)], dim=1)  # (rows, calls, 3)
    for row, seed in enumerate((1, 2)):
        generator = torch.Generator().manual_seed(seed)
        expected = torch.cat([torch.randn(4, 3, generator=generator) for _ in range(2)])[:6]
        torch.testing.assert_close(draws[row], expected)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        noise.draw(torch.empty(3, 3))
