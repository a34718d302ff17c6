"""Bidirectional consistency models: the two-time parametrisation, its objective, samplers and applications.

Known answers: ``f(x, t, t) = x`` bit for bit; every jump is one DDIM step; for Gaussian data the exact flow map
makes generation, inversion and reconstruction exact; for a point mass the exact map zeroes both loss terms;
a small trained 2D model approaches the exact flow of a Gaussian mixture.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor, nn

from diffbook.data import GaussianMixture, gaussian
from diffbook.diffusion import BCMProcess, BidirectionalConsistency, karras_grid
from diffbook.experiments import Experiment
from diffbook.experiments.scoring import flow_scores
from diffbook.metrics.flow import (
    consistency_scores,
    ddim_inversion_baseline,
    edm_baseline,
    exact_references,
    mixture_flow,
)
from diffbook.nets import TimeMLP, UNet, load_single_time_weights, unet_preset
from diffbook.objectives import BCMLoss
from diffbook.objectives.bcm import curriculum, draw_u_indices, index_probabilities, pseudo_huber
from diffbook.samplers import (
    INVERSIONS,
    MULTISTEP_LEVELS,
    SCHEDULES,
    consistency_sample,
    inversion_chain,
    invert,
    multistep_schedule,
    ode_flow,
    reconstruct,
    run_schedule,
    schedule_nfe,
)
from diffbook.samplers.bcm_applications import inpaint, interpolate, jpeg_compress, restore, slerp
from diffbook.train import TrainConfig, Trainer, train

PROCESS = BCMProcess()
SIGMA_MIN = PROCESS.sigma_min


def random_model(two_times: bool = True, seed: int = 0, **kwargs) -> BidirectionalConsistency:
    torch.manual_seed(seed)
    return BidirectionalConsistency(TimeMLP(hidden=32, emb_dim=32, two_times=two_times, **kwargs), BCMProcess())


# Helpers: exact flow maps


def gaussian_flow(x: Tensor, t: Tensor | float, u: Tensor | float, mean: Tensor, std: float) -> Tensor:
    """The PF-ODE flow map of N(mean, std^2 I) data in closed form: ``mean + sqrt((s^2+u^2)/(s^2+t^2)) (x - mean)``.

    ``std = 0`` is a point mass, whose trajectories are straight lines ``mean + (u/t) (x - mean)``."""
    t, u = torch.as_tensor(t, dtype=x.dtype), torch.as_tensor(u, dtype=x.dtype)
    ratio = ((std**2 + u**2) / (std**2 + t**2)).sqrt()
    return mean + ratio.reshape(-1, *[1] * (x.ndim - 1)) * (x - mean)


class ExactGaussianNet(nn.Module):
    """The raw network ``F`` whose preconditioned jump is the exact flow map of N(mean, std^2 I) data.

    It reads ``t`` and ``u`` back from the noise labels and ``x`` from ``c_in x``, then returns
    ``(Phi(x) - c_skip x) / c_out`` (0 where ``t = u``, where ``c_out`` is 0)."""

    two_times = True

    def __init__(self, process: BCMProcess, mean: Tensor, std: float) -> None:
        super().__init__()
        self.process, self.mean, self.std = process, mean, std

    def forward(self, x_in: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        t, u = (noise_labels / self.process.noise_label_scale).exp().unbind(1)
        c_skip, c_out, c_in = self.process.scalings(t, u)
        shape = (-1, *[1] * (x_in.ndim - 1))
        x = x_in / c_in.reshape(shape).to(x_in)
        target = gaussian_flow(x, t, u, self.mean.to(x), self.std)
        jumps = c_out != 0
        out = (target - c_skip.reshape(shape).to(x) * x) / c_out.where(jumps, 1).reshape(shape).to(x)
        return out * jumps.reshape(shape).to(x)


def exact_model(mean: Tensor, std: float) -> BidirectionalConsistency:
    return BidirectionalConsistency(ExactGaussianNet(PROCESS, mean, std), PROCESS)


class CountingNet(nn.Module):
    """A network that counts its calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    @property
    def two_times(self) -> bool:
        return self.net.two_times

    def forward(self, *args) -> Tensor:
        self.calls += 1
        return self.net(*args)


# The two-time parametrisation


@pytest.mark.parametrize("two_times", [True, False])
def test_a_jump_to_its_own_level_is_the_identity_bit_for_bit(two_times):
    model = random_model(two_times)
    x = torch.randn(6, 2) * 10
    t = torch.tensor([0.002, 0.07, 0.5, 3.0, 17.0, 80.0])
    assert torch.equal(model(x, t, t), x)
    unet = BidirectionalConsistency(UNet(unet_preset("digits16", two_times=two_times, init_zero=False)), PROCESS)
    images = torch.randn(2, 1, 16, 16)
    assert torch.equal(unet.train()(images, 2.5, 2.5), images)  # dropout on: F is random, f is still x


@pytest.mark.parametrize("u", [0.002, 0.3, 1.7, 40.0, 80.0])  # below and above t = 2.5
def test_every_jump_is_one_ddim_step_of_the_networks_denoiser(u):
    model = random_model().double()
    x, t, s = torch.randn(5, 2, dtype=torch.float64) * 3, 2.5, PROCESS.sigma_data
    out, _ = model.raw(x, t, u)
    denoised = s**2 / (t**2 + s**2) * x + t * s / math.sqrt(t**2 + s**2) * out  # c_skip(t, 0) x + c_out(t, 0) F
    expected = (u / t) * x + (1 - u / t) * denoised
    torch.testing.assert_close(model(x, t, u), expected, rtol=1e-12, atol=1e-12)


def test_scalings_match_the_papers_formulas_and_c_out_is_antisymmetric():
    t = torch.tensor([80.0, 2.0, 0.07, 0.3], dtype=torch.float64)
    u = torch.tensor([0.002, 15.0, 80.0, 0.3], dtype=torch.float64)
    c_skip, c_out, c_in = PROCESS.scalings(t, u)
    s = PROCESS.sigma_data
    torch.testing.assert_close(c_skip, (t * u + s**2) / (t**2 + s**2), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_out, (t - u) * s / (t**2 + s**2).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(c_in, 1 / (t**2 + s**2).sqrt(), rtol=1e-12, atol=0)
    c_out_back = PROCESS.scalings(u, t)[1]
    torch.testing.assert_close(c_out, -c_out_back * (u**2 + s**2).sqrt() / (t**2 + s**2).sqrt(), rtol=1e-12, atol=0)
    assert c_skip[3] == 1 and c_out[3] == 0  # t = u
    labels = PROCESS.noise_label(torch.tensor([1.0, math.e], dtype=torch.float64))
    torch.testing.assert_close(labels, torch.tensor([0.0, 250.0], dtype=torch.float64))  # 250 ln(sigma)


# Exact flow maps: every sampler is exact


def test_the_exact_ode_reference_matches_the_closed_form_flow_of_a_gaussian():
    mean, std = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    x = torch.randn(100, 2, dtype=torch.float64)
    for t, u in [(2.0, 0.002), (0.07, 2.0), (80.0, 0.002)]:
        reference = mixture_flow(gaussian((0.5, -1.0), std), x * t + mean, t, u)
        # Measured with 200 steps: 3e-4 at most, on data of scale 1; the trained model is held to 0.35.
        torch.testing.assert_close(reference, gaussian_flow(x * t + mean, t, u, mean, std), rtol=0, atol=1e-3)


@pytest.mark.parametrize("nfe", sorted(SCHEDULES))
def test_the_exact_flow_map_makes_every_generation_schedule_exact(nfe):
    mean, std = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    noise = torch.randn(64, 2, dtype=torch.float64)
    out = consistency_sample(exact_model(mean, std), noise, SCHEDULES[nfe], generator=torch.Generator().manual_seed(1))
    replay = torch.Generator().manual_seed(1)  # the re-noising the sampler draws between chains
    schedule = SCHEDULES[nfe]
    x = gaussian_flow(schedule[0][0] * noise, schedule[0][0], schedule[0][-1], mean, std)
    for previous, chain in zip(schedule[:-1], schedule[1:], strict=True):
        x = x + math.sqrt(chain[0] ** 2 - previous[-1] ** 2) * torch.randn(x.shape, generator=replay, dtype=x.dtype)
        x = gaussian_flow(x, chain[0], chain[-1], mean, std)
    assert out.nfe == nfe
    torch.testing.assert_close(out.samples, x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("nfe", sorted(INVERSIONS))
def test_the_exact_flow_map_makes_inversion_and_reconstruction_exact(nfe):
    mean, std = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    model, levels = exact_model(mean, std), INVERSIONS[nfe]
    x0 = mean + std * torch.randn(64, 2, dtype=torch.float64)
    start = x0 + levels[0] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)
    latent = invert(model, x0, levels, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        latent.samples * 80, gaussian_flow(start, levels[0], 80.0, mean, std), rtol=1e-10, atol=1e-9
    )
    back = reconstruct(model, x0, levels, generator=torch.Generator().manual_seed(2))
    # The ODE carries the noised data up to 80 and back to 0.002: where the trajectory through it is at 0.002.
    torch.testing.assert_close(
        back.samples, gaussian_flow(start, levels[0], SIGMA_MIN, mean, std), rtol=1e-9, atol=1e-9
    )
    assert (latent.nfe, back.nfe) == (nfe, nfe + 1)


def test_ode_flow_euler_is_exact_for_a_point_mass_both_ways_and_counts_its_calls():
    # A point mass has D = mean at every level, so trajectories are straight lines and one Euler (DDIM) step,
    # x_u = (u/t) x + (1 - u/t) mean, is already exact, up or down; Heun spends two calls a step.
    mean = torch.tensor([0.7, -0.4], dtype=torch.float64)
    x = mean + 2.0 * torch.randn(50, 2, dtype=torch.float64)

    def denoiser(x: Tensor, sigma: float) -> Tensor:
        return mean.expand_as(x)

    for t, u in [(2.0, 0.002), (0.07, 80.0)]:
        for steps, solver in [(1, "euler"), (7, "euler"), (3, "heun")]:
            out = ode_flow(denoiser, x, t, u, steps, solver)
            torch.testing.assert_close(out.samples, mean + (u / t) * (x - mean), rtol=1e-11, atol=1e-11)
            assert out.nfe == (steps if solver == "euler" else 2 * steps)
    with pytest.raises(ValueError, match="positive"):
        ode_flow(denoiser, x, 2.0, 0.0, 4)


def test_multistep_schedules_jump_to_sigma_min_from_the_levels_bcm_schedules_visit():
    assert multistep_schedule((80.0, 2.4)) == ((80.0, 0.002), (2.4, 0.002))
    for nfe, levels in MULTISTEP_LEVELS.items():
        visited = {level for chain in SCHEDULES[nfe] for level in chain if level > SIGMA_MIN}
        assert sorted(visited, reverse=True) == list(levels)
        assert schedule_nfe(multistep_schedule(levels)) == schedule_nfe(SCHEDULES[nfe]) == nfe
    with pytest.raises(ValueError, match="decrease"):
        multistep_schedule((2.4, 80.0))
    assert inversion_chain(1) == INVERSIONS[1] and inversion_chain(2) == INVERSIONS[2]
    chain = inversion_chain(4)
    ratios = torch.tensor(chain[1:]) / torch.tensor(chain[:-1])
    assert len(chain) == 5 and chain[0] == pytest.approx(0.07) and chain[-1] == pytest.approx(80.0)
    torch.testing.assert_close(ratios, torch.full((4,), (80 / 0.07) ** 0.25), rtol=1e-6, atol=0)


def test_the_exact_flow_map_scores_at_the_exact_references():
    mean, std = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    mixture = gaussian((0.5, -1.0), std)
    scores = consistency_scores(exact_model(mean, std), mixture, count=500, seed=0)
    floors = exact_references(mixture, count=500, seed=0)
    for nfe in INVERSIONS:
        assert scores[f"latent_rms_inv{nfe}"] < 5e-4  # units of sigma_max; measured 1.5e-4, the reference's Heun error
        assert scores[f"recon_mse_inv{nfe}"] == pytest.approx(floors["recon_mse"], rel=1e-3)
    assert scores["jump_error_down"] < 1e-3 and scores["jump_error_up"] < 1e-3 and scores["roundtrip_rms"] < 1e-5
    assert scores["mmd_nfe1"] == pytest.approx(floors["mmd"], abs=1e-4)
    assert scores["latent_std_inv2"] == pytest.approx(floors["latent_std"], rel=1e-3)
    assert abs(floors["latent_std"] - 1) < 0.1  # 500 draws of a standard normal, per coordinate


def test_ode_baselines_converge_to_the_exact_flow_with_steps():
    mixture = gaussian((0.5, -1.0), 0.3)
    ddim = ddim_inversion_baseline(mixture.denoiser, mixture, steps=(1, 4, 64), count=300, seed=0)
    errors = [ddim[n]["latent_rms"] for n in (1, 4, 64)]
    # Euler is first order: 16 times the steps, about a sixteenth of the error (measured 0.35, 0.026).
    assert errors[0] > errors[1] > 8 * errors[2] and errors[2] < 0.05
    floor = exact_references(mixture, count=300, seed=0)["recon_mse"]
    assert ddim[64]["recon_mse"] == pytest.approx(floor, rel=0.05)
    heun = edm_baseline(mixture.denoiser, mixture, steps=(1, 2, 40), count=300, seed=0)
    assert list(heun) == [1, 3, 79]  # Heun: 2 N - 1 evaluations
    assert heun[79] < 1e-3


def test_sweeps_score_consistency_models_on_mixtures_against_the_exact_ode():
    cfg = Experiment.load("toy/bcm", ["network.overrides.hidden=16", "network.overrides.emb_dim=16"])
    scores = flow_scores(cfg, cfg.build_model().eval(), count=100, seed=0)
    expected = {f"mmd_nfe{k}" for k in SCHEDULES} | {f"recon_mse_inv{k}" for k in (1, 2, 3, 4)}
    assert expected <= scores.keys() and all(math.isfinite(v) for v in scores.values())
    assert flow_scores(Experiment.load("toy/edm"), Experiment.load("toy/edm").build_model(), 100, 0) == {}
    other_set = Experiment.load("toy/bcm", ["data.name=two_moons"])  # no exact ODE to compare with
    assert flow_scores(other_set, other_set.build_model(), 100, 0) == {}


# NFE


def test_every_sampler_reports_the_network_calls_it_made():
    counter = CountingNet(TimeMLP(hidden=16, emb_dim=16, two_times=True))
    model = BidirectionalConsistency(counter, PROCESS).eval()
    x, generator = torch.randn(4, 2), torch.Generator().manual_seed(0)
    calls = [
        lambda: consistency_sample(model, x, SCHEDULES[1]),
        lambda: consistency_sample(model, x, SCHEDULES[2]),
        lambda: consistency_sample(model, x, SCHEDULES[3], generator=generator),
        lambda: consistency_sample(model, x, SCHEDULES[4], generator=generator),
        lambda: consistency_sample(model, x, [(80.0, 20.0, 5.0, 1.0, 0.002)]),
        lambda: invert(model, x, INVERSIONS[1]),
        lambda: invert(model, x, INVERSIONS[2]),
        lambda: reconstruct(model, x, INVERSIONS[2], SCHEDULES[2]),
        lambda: interpolate(model, x, -x, [0.0, 0.3, 1.0]),
        lambda: inpaint(model, x, torch.tensor([1.0, 0.0]), levels=(80.0, 2.0, 0.5)),
        lambda: restore(model, x, (0.07, 1.0, 3.0)),
        lambda: Experiment.load("toy/bcm", ["sample.steps=3"]).sampler(model, x, None, generator),
    ]
    expected = [1, 2, 3, 4, 4, 1, 2, 4, 3, 6, 3, 3]
    for call, nfe in zip(calls, expected, strict=True):
        counter.calls = 0
        assert call().nfe == counter.calls == nfe


def test_schedules_that_would_remove_noise_or_have_no_jump_are_errors():
    model = random_model()
    with pytest.raises(ValueError, match="below the level"):
        consistency_sample(model, torch.randn(2, 2), [(80.0, 1.0), (0.5, 0.002)])
    with pytest.raises(ValueError, match="no jump"):
        run_schedule(model, torch.randn(2, 2), [(0.07,)])
    with pytest.raises(ValueError, match="positive"):
        invert(model, torch.randn(2, 2), (0.0, 80.0))


# A trained 2D model against the exact flow of a Gaussian mixture


TWO_MODES = GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.2, 0.2]), torch.ones(2))


@pytest.fixture(scope="module")
def trained_2d() -> tuple[BidirectionalConsistency, BidirectionalConsistency]:
    """(initial, trained): BCT from scratch on two Gaussians, 800 steps of batch 128 (about 10 s on one core)."""
    data = TWO_MODES.sample(10_000, torch.Generator().manual_seed(0)).float()
    torch.manual_seed(0)
    model = BidirectionalConsistency(TimeMLP(hidden=64, emb_dim=64, two_times=True), BCMProcess())
    initial = copy.deepcopy(model).eval()
    objective = BCMLoss(s0=10, s1=20, total_steps=800)
    train(
        model,
        objective,
        data,
        steps=800,
        batch_size=128,
        lr=1e-3,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    assert objective.step == 800 and objective.num_scales == 21
    return initial, model.eval()


def relative_flow_error(model: BidirectionalConsistency, t: float, u: float) -> float:
    """RMS distance to the exact jump t -> u of noised mixture samples, over the RMS spread of the exact ends."""
    generator = torch.Generator().manual_seed(2)
    x_t = TWO_MODES.sample(1000, generator).float() + t * torch.randn(1000, 2, generator=generator)
    exact = mixture_flow(TWO_MODES, x_t, t, u)
    with torch.no_grad():
        error = (model(x_t, t, u) - exact).square().sum(1).mean().sqrt()
    return float(error / (exact - exact.mean(0)).square().sum(1).mean().sqrt())


@pytest.mark.parametrize(("t", "u"), [(2.0, 0.002), (0.07, 2.0)])  # generation and inversion jumps
def test_a_small_trained_model_approaches_the_exact_flow_map_both_ways(trained_2d, t, u):
    initial, trained = trained_2d
    # Measured at this seed: 0.16 down, 0.24 up, from 0.87 and 0.68 at initialisation.
    assert relative_flow_error(initial, t, u) > 0.6
    assert relative_flow_error(trained, t, u) < 0.35


def test_two_step_inversion_reconstructs_better_than_one_step(trained_2d):
    _, trained = trained_2d
    x0 = TWO_MODES.sample(1000, torch.Generator().manual_seed(4)).float()
    errors = [
        (reconstruct(trained, x0, INVERSIONS[nfe], generator=torch.Generator().manual_seed(3)).samples - x0)
        .square()
        .mean()
        for nfe in (1, 2)
    ]
    assert errors[1] < 0.7 * errors[0]  # measured: 0.057 against 0.24


# The objective


def test_the_curriculum_doubles_n_at_icts_steps():
    steps = [0, 99_999, 100_000, 200_000, 600_000, 700_000, 799_999]
    assert [curriculum(k, 10, 1280, 800_000) for k in steps] == [11, 11, 21, 41, 641, 1281, 1281]
    assert {curriculum(k, 320, 320, 800_000) for k in (0, 400_000, 799_999)} == {321}  # the BCM fine-tune
    assert [curriculum(k, 10, 160, 2) for k in range(6)] == [11, 21, 41, 81, 161, 161]  # shorter than 5 stages


def test_the_objective_counts_its_training_steps_and_saves_the_count():
    model, objective = random_model(), BCMLoss(s0=10, s1=40, total_steps=30)  # N doubles every 10 steps
    for _ in range(10):
        objective(model.train(), torch.randn(8, 2))
    assert (objective.step, objective.num_scales) == (10, 21)
    objective(model.eval(), torch.randn(8, 2))  # an evaluation is not a training step
    restored = BCMLoss(s0=10, s1=40, total_steps=30)
    restored.load_state_dict(objective.state_dict())
    assert (restored.step, restored.num_scales) == (10, 21)


def test_the_trainer_checkpoints_the_objectives_step_and_resumes_it(tmp_path):
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    config = dict(batch_size=8, lr=1e-3, log_every=1, checkpoint_every=3)
    first = BCMLoss(s0=10, s1=40, total_steps=30)
    Trainer(random_model(), first, data, TrainConfig(steps=3, **config), tmp_path, progress=False).fit()
    second = BCMLoss(s0=10, s1=40, total_steps=30)
    trainer = Trainer(random_model(), second, data, TrainConfig(steps=5, **config), tmp_path, progress=False)
    trainer.fit()
    assert (first.step, second.step) == (3, 5)


def test_grid_and_index_probabilities():
    sigmas = karras_grid(11, 0.002, 80.0)
    assert sigmas[0].item() == pytest.approx(0.002, rel=1e-12) and sigmas[-1].item() == pytest.approx(80, rel=1e-12)
    assert (sigmas.diff() > 0).all()
    p = index_probabilities(sigmas, -1.1, 2.0)
    phi = [0.5 * (1 + math.erf((math.log(s) + 1.1) / (2.0 * math.sqrt(2)))) for s in sigmas.tolist()]
    expected = torch.tensor(phi, dtype=torch.float64).diff()
    torch.testing.assert_close(p, expected / expected.sum(), rtol=1e-9, atol=0)
    p_t, p_u = BCMLoss(exclude_sigma_max=True).probabilities(sigmas)
    assert p_t[-1] == 0 and p_u[-1] > 0 and torch.equal(p_t[:-1], p_u[:-1])


def test_u_is_never_t_and_otherwise_follows_p():
    p = index_probabilities(karras_grid(11, 0.002, 80.0), -1.1, 2.0)
    generator = torch.Generator().manual_seed(0)
    i = torch.full((200_000,), 4)
    j = draw_u_indices(i, p, generator)
    assert not (j == 5).any()
    expected = p.clone()
    expected[5] = 0
    frequencies = torch.bincount(j, minlength=10).double() / len(j)
    torch.testing.assert_close(frequencies, expected / expected.sum(), rtol=0, atol=5e-3)
    mixed = draw_u_indices(torch.arange(10).repeat(1000), p, generator)
    assert not (mixed == torch.arange(10).repeat(1000) + 1).any()
    assert (mixed < 5).any() and (mixed > 5).any()  # jumps down and up


def test_pseudo_huber_is_l2_far_away_and_quadratic_near():
    a, b = torch.tensor([[3.0, 4.0]]), torch.zeros(1, 2)
    assert pseudo_huber(a, b, 0.0).item() == 5
    assert pseudo_huber(a, b, 1.0).item() == pytest.approx(math.sqrt(26) - 1)
    small = torch.tensor([[1e-3, 0.0]], dtype=torch.float64)
    assert pseudo_huber(small, torch.zeros_like(small), 0.1).item() == pytest.approx(1e-6 / 0.2, rel=1e-4)


class ConstantNet(nn.Module):
    """``F = delta`` whatever the input: the loss then has a closed form."""

    two_times = True

    def __init__(self, delta: Tensor) -> None:
        super().__init__()
        self.delta = nn.Parameter(delta)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.delta.expand_as(x)


def test_the_loss_has_its_closed_form_weighting_and_huber_constant():
    delta = torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=torch.float64)
    model = BidirectionalConsistency(ConstantNet(delta), PROCESS)
    noise = torch.randn(3, 4, dtype=torch.float64)
    t, t_prev, u = (
        torch.tensor(v, dtype=torch.float64) for v in ([2.0, 0.5, 10.0], [1.5, 0.4, 8.0], [40.0, 0.01, 3.0])
    )
    out = BCMLoss().terms(model, torch.zeros(3, 4, dtype=torch.float64), noise, t, t_prev, u)
    s, c = PROCESS.sigma_data, 0.00054 * math.sqrt(4)

    def f(x: Tensor, a: Tensor, b: Tensor) -> Tensor:  # the paper's scalings, written out
        skip = (a * b + s**2) / (a**2 + s**2)
        return skip[:, None] * x + ((a - b) * s / (a**2 + s**2).sqrt())[:, None] * delta

    def d(a: Tensor, b: Tensor) -> Tensor:
        return (((a - b) ** 2).sum(1) + c**2).sqrt().sub(c) / 2  # / sqrt(dim)

    target = f(t_prev[:, None] * noise, t_prev, torch.full_like(t, SIGMA_MIN))
    ct = d(f(t[:, None] * noise, t, torch.full_like(t, SIGMA_MIN)), target) / (t - t_prev)
    jumped = f(t[:, None] * noise, t, u)
    bcm = d(f(jumped, u, torch.full_like(t, SIGMA_MIN)), target) / (t - u).abs()
    torch.testing.assert_close(out["ct"], ct, rtol=1e-10, atol=0)
    torch.testing.assert_close(out["bcm"], bcm, rtol=1e-10, atol=0)
    torch.testing.assert_close(out["loss"], (ct + bcm).mean(), rtol=1e-10, atol=0)


def test_both_terms_vanish_for_the_exact_map_of_a_point_mass():
    # For a point mass the CT estimate x0 + t' z of the ODE step is exact, so L_CT and L_BCM are zero. (For any
    # spread-out data the exact map still has L_CT > 0: CT's single-sample target is unbiased, not exact.)
    mean = torch.tensor([0.7, -0.4], dtype=torch.float64)
    out = BCMLoss()(exact_model(mean, 0.0), mean.expand(256, 2), torch.Generator().manual_seed(0))
    assert out["ct"].abs().max() < 1e-9 and out["bcm"].abs().max() < 1e-9
    assert (out["u"] < out["sigma"]).any() and (out["u"] > out["sigma"]).any()


def test_the_target_is_frozen_and_the_bcm_term_trains_through_the_jump_only():
    model = random_model().double()
    x0, noise = torch.randn(16, 2, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    t, t_prev = torch.full((16,), 3.0, dtype=torch.float64), torch.full((16,), 2.5, dtype=torch.float64)
    u = torch.linspace(0.01, 60.0, 16, dtype=torch.float64)

    def gradients(loss: Tensor) -> list[Tensor]:
        return torch.autograd.grad(loss, list(model.parameters()))

    actual = gradients(BCMLoss().terms(model, x0, noise, t, t_prev, u)["loss"])
    frozen = copy.deepcopy(model).requires_grad_(False)  # theta^-: a copy, no gradient
    c = 0.00054 * math.sqrt(2)

    def d(a: Tensor, b: Tensor) -> Tensor:
        return pseudo_huber(a, b, c) / math.sqrt(2)

    def reference(outer: nn.Module) -> Tensor:
        target = frozen(x0 + t_prev[:, None] * noise, t_prev, SIGMA_MIN)
        x_t = x0 + t[:, None] * noise
        ct = d(model(x_t, t, SIGMA_MIN), target) / (t - t_prev)
        bcm = d(outer(model(x_t, t, u), u, SIGMA_MIN), target) / (t - u).abs()
        return (ct + bcm).mean()

    for a, b in zip(actual, gradients(reference(frozen)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    unfrozen = gradients(reference(model))  # what the loss would train without the stop-gradient
    assert any(not torch.allclose(a, b) for a, b in zip(actual, unfrozen, strict=True))


class DropoutProbe(nn.Module):
    """Records the dropout mask of each call; outputs zeros."""

    two_times = True

    def __init__(self) -> None:
        super().__init__()
        self.dropout, self.masks = nn.Dropout(0.5), []
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.masks.append(self.dropout(torch.ones_like(x)))
        return x * self.weight


def test_all_four_network_calls_share_dropout_masks_and_leave_the_global_generator_alone():
    probe = DropoutProbe()
    model, x0 = BidirectionalConsistency(probe, PROCESS).train(), torch.randn(64, 2)
    state = torch.get_rng_state()
    BCMLoss()(model, x0, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert len(probe.masks) == 4 and 0 < probe.masks[0].mean() < 2
    assert all(torch.equal(mask, probe.masks[0]) for mask in probe.masks)


def test_ct_only_trains_a_single_time_network_whose_weights_start_bcm_fine_tuning_exactly(tmp_path):
    consistency = random_model(two_times=False, seed=1)
    out = BCMLoss(bidirectional=False)(consistency, torch.randn(32, 2), torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.equal(out["bcm"], torch.zeros(32)) and (out["u"] == SIGMA_MIN).all()
    assert consistency.net.embed.mlp[0].weight.grad.abs().sum() > 0
    two_time = random_model(two_times=True, seed=2)
    load_single_time_weights(two_time.net, consistency.net.state_dict())
    x, t = torch.randn(8, 2), torch.tensor([0.01, 0.1, 1.0, 2.0, 5.0, 10.0, 40.0, 80.0])
    assert torch.equal(two_time(x, t, SIGMA_MIN), consistency(x, t, SIGMA_MIN))
    for u in (0.3, 60.0):  # the merge [I | 0] ignores u: F is the consistency model's
        assert torch.equal(two_time.raw(x, t, u)[0], consistency.raw(x, t, u)[0])
    # The config route: network.init_from, a Trainer checkpoint of the consistency model.
    torch.save({"model": consistency.state_dict(), "ema": None}, tmp_path / "checkpoint.pt")
    overrides = ["network.overrides.hidden=32", "network.overrides.emb_dim=32"]
    cfg = Experiment.load("toy/bcm", [*overrides, f"network.init_from={tmp_path / 'checkpoint.pt'}"])
    fine_tuned = cfg.initial_model()
    assert torch.equal(fine_tuned(x, t, SIGMA_MIN), consistency(x, t, SIGMA_MIN))


def test_unet_consistency_weights_load_into_the_two_time_unet_exactly():
    torch.manual_seed(0)
    single = UNet(unet_preset("digits16", init_zero=False)).eval()
    two_time = UNet(unet_preset("digits16", init_zero=False, two_times=True)).eval()
    load_single_time_weights(two_time, single.state_dict())
    x = torch.randn(3, 1, 16, 16)
    noise_labels = torch.tensor([-500.0, 10.0, 900.0])
    both = torch.stack([noise_labels, torch.tensor([-1500.0, 200.0, 1000.0])], dim=1)
    assert torch.equal(two_time(x, both), single(x, noise_labels))
    with pytest.raises(ValueError, match="already holds a two-time"):
        load_single_time_weights(two_time, two_time.state_dict())
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        two_time(x, noise_labels)
    # The package's single-time U-Net adds its class inside the MLP, the two-time one after the merge.
    conditional = UNet(unet_preset("digits16", num_classes=10, two_times=True))
    with pytest.raises(ValueError, match="class-conditional single-time network adds its class before"):
        load_single_time_weights(conditional, UNet(unet_preset("digits16", num_classes=10)).state_dict())


# Configs


def test_bcm_configs_build_a_consistency_model_its_objective_and_schedules():
    cfg = Experiment.load("toy/bcm")
    model = cfg.build_model()
    assert isinstance(model, BidirectionalConsistency) and model.two_times
    assert isinstance(cfg.build_objective(), BCMLoss)
    assert Experiment.load("toy/bcm", ["sample.steps=3"]).sampler.schedule == SCHEDULES[3]
    assert Experiment.load("toy/bcm", ["sample.steps=3"]).sampler.stochastic
    custom = Experiment.load("toy/bcm", ["sample.steps=2", "sample.schedule=[[80, 1, 0.002]]"]).sampler
    assert custom.schedule == ((80.0, 1.0, 0.002),) and not custom.stochastic
    with pytest.raises(ValueError, match="no default consistency schedule"):
        Experiment.load("toy/bcm", ["sample.steps=5"])
    with pytest.raises(ValueError, match="makes 2 network calls"):
        Experiment.load("toy/bcm", ["sample.steps=1", "sample.schedule=[[80, 1, 0.002]]"])


def test_the_imagenet64_fine_tune_carries_the_authors_settings():
    experiment = Experiment.load("imagenet64/bcm")
    cfg = experiment.config
    objective, train_cfg = experiment.build_objective(), cfg["train"]
    assert objective.num_scales == 321 and objective.exclude_sigma_max and objective.bidirectional
    assert (train_cfg["batch_size"], train_cfg["lr"], train_cfg["precision"]) == (4096, 1e-4, "fp16")
    assert 0.5 ** (4096 / train_cfg["ema_halflife_images"]) == pytest.approx(0.99997, abs=1e-9)
    network = experiment.network.config()
    assert network.num_classes == 1000 and network.two_times
    cifar = Experiment.load("cifar10/bcm").config
    assert 0.5 ** (1024 / cifar["train"]["ema_halflife_images"]) == pytest.approx(0.99993, abs=1e-9)
    assert "ours" in cifar["source"].lower()


# Applications


def test_interpolation_ends_at_the_two_reconstructions():
    mean, std = torch.tensor([0.5, -1.0], dtype=torch.float64), 0.3
    model = exact_model(mean, std)
    x_a, x_b = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    out = interpolate(model, x_a, x_b, [0.0, 0.5, 1.0], generator=torch.Generator().manual_seed(0))
    start = torch.cat([x_a, x_b]) + 0.07 * torch.randn(
        10, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    ends = gaussian_flow(start, 0.07, SIGMA_MIN, mean, std)
    assert out.samples.shape == (3, 5, 2) and out.nfe == 3
    torch.testing.assert_close(out.samples[0], ends[:5], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.samples[2], ends[5:], rtol=1e-9, atol=1e-9)


def test_slerp_keeps_the_norm_of_orthogonal_unit_vectors():
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    for w in (0.0, 0.25, 0.5, 1.0):
        mid = slerp(a, b, w)
        assert mid.norm().item() == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(mid, torch.tensor([[math.cos(w * math.pi / 2), math.sin(w * math.pi / 2), 0.0]]))
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel: the straight line


def test_inpainting_keeps_the_known_pixels_and_restoration_keeps_the_shape():
    model = BidirectionalConsistency(UNet(unet_preset("digits16", two_times=True)), PROCESS).eval()
    images = torch.rand(2, 1, 16, 16) * 2 - 1
    mask = torch.ones(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 0
    filled = inpaint(model, images, mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(filled.samples * mask, images * mask) and filled.nfe == 8
    assert not torch.equal(filled.samples, images)
    restored = restore(model, jpeg_compress(images, 20))
    assert restored.samples.shape == images.shape and restored.nfe == 2


def test_jpeg_compression_quantises_and_loses_detail():
    images = torch.rand(3, 1, 16, 16) * 2 - 1
    compressed = jpeg_compress(images, quality=10)
    assert compressed.shape == images.shape and compressed.min() >= -1 and compressed.max() <= 1
    error_low = (compressed - images).abs().mean()
    error_high = (jpeg_compress(images, quality=95) - images).abs().mean()
    assert error_high < error_low
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(images, quality=0)
