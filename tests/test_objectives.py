"""The denoising objective: its identities with EDM's weighted loss and DDPM's L_simple, and its optimum."""

import math

import pytest
import torch
from torch import nn

from diffbook.diffusion import DDPM, EDM, VE, VP, Denoiser
from diffbook.experiments import Experiment
from diffbook.objectives import DenoisingLoss, IsoLoss, SelfPerceptualLoss, isotropy_penalty
from diffbook.profiles import seed_everything


class _RandomNet(nn.Module):
    def __init__(self, dim=3):
        super().__init__()
        self.linear = nn.Linear(dim + 1, dim)

    def forward(self, x, noise_labels, class_labels=None):
        return self.linear(torch.cat([x, noise_labels[:, None]], dim=1))


class _PointOracle(nn.Module):
    """The exact raw output for data that is one point ``x0``: ``D = x0`` at every noise level, so
    ``F = (x0 - c_skip x) / c_out``. It reads sigma back from EDM's ``c_noise = ln(sigma) / 4``."""

    def __init__(self, x0, process):
        super().__init__()
        self.x0, self.process = x0, process

    def forward(self, x_in, noise_labels, class_labels=None):
        sigma = (4 * noise_labels).exp()
        c_skip, c_out, c_in, _ = self.process.scalings(sigma)
        x = x_in / c_in[:, None]
        return (self.x0 - c_skip[:, None] * x) / c_out[:, None]


@pytest.mark.parametrize("process", [EDM(), VP(), VE(), DDPM(prediction="x0"), DDPM(prediction="v")])
def test_raw_space_loss_is_edm_weighted_denoising_loss(process):
    """MSE of F against its effective target equals lambda(sigma) ||D - x0||^2 with lambda = 1/c_out^2."""
    torch.manual_seed(0)
    model = Denoiser(_RandomNet(), process)
    x0 = torch.randn(64, 3)
    g = torch.Generator().manual_seed(7)
    out = DenoisingLoss()(model, x0, generator=g)
    g = torch.Generator().manual_seed(7)
    sigma = process.sample_sigma(64, generator=g)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
    _, c_out, _, _ = process.scalings(sigma)
    weighted = ((model(x, sigma) - x0) ** 2).mean(1) / c_out**2
    torch.testing.assert_close(out["per_sample"], weighted, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["sigma"], sigma)


def test_ddpm_eps_loss_is_l_simple():
    """With eps-prediction the objective is Ho et al.'s ||eps - eps_theta(x_t, t)||^2, t uniform."""
    torch.manual_seed(0)
    process = DDPM()
    net = _RandomNet()
    x0 = torch.randn(32, 3)
    g = torch.Generator().manual_seed(3)
    out = DenoisingLoss()(Denoiser(net, process), x0, generator=g)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, process.T, (32,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    x_t = process.q_sample(x0, t, eps)
    l_simple = ((net(x_t, t.float()) - eps) ** 2).mean(1)
    torch.testing.assert_close(out["per_sample"], l_simple, rtol=1e-4, atol=1e-5)


def test_loss_is_zero_at_the_exact_denoiser_and_positive_elsewhere():
    process = EDM()
    x0 = torch.tensor([0.3, -0.7, 1.1])
    oracle = Denoiser(_PointOracle(x0, process), process)
    batch = x0.expand(128, 3)
    assert DenoisingLoss()(oracle, batch)["loss"] < 1e-8
    assert DenoisingLoss()(oracle, batch + 0.1)["loss"] > 1e-3


def test_loss_backpropagates_to_the_network():
    model = Denoiser(_RandomNet(), EDM())
    DenoisingLoss()(model, torch.randn(16, 3))["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


class _LabelEcho(nn.Module):
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x, noise_labels, class_labels=None):
        self.seen = class_labels
        return torch.zeros_like(x)


def test_label_dropout_replaces_labels_by_the_null_class_at_the_given_rate():
    net = _LabelEcho()
    labels = torch.randint(0, 10, (20_000,))
    DenoisingLoss(label_dropout=0.1)(Denoiser(net, EDM()), (torch.randn(20_000, 2), labels))
    dropped = net.seen == 10
    assert abs(dropped.float().mean() - 0.1) < 0.01
    assert torch.equal(net.seen[~dropped], labels[~dropped])
    with pytest.raises(ValueError, match="class-conditional"):
        DenoisingLoss(label_dropout=0.1)(Denoiser(_RandomNet(2), EDM()), (torch.randn(4, 2), labels[:4]))


# Objectives stacked on other objectives (the comparison chapter's combinations), built from configs

ISO_OVER_SP = "objective={kind: iso, weight: 0.5, base: {kind: self_perceptual}}"


def _sp_model():
    seed_everything(0)
    return Experiment.load("toy/sp_pretrain").build_model()


def test_iso_over_self_perceptual_adds_the_penalty_of_its_prediction():
    model = _sp_model()
    objective = Experiment.load("toy/self_perceptual", [ISO_OVER_SP]).build_objective(model)
    assert isinstance(objective, IsoLoss) and isinstance(objective.base, SelfPerceptualLoss)
    x0 = torch.randn(16, 2)
    out = objective(model, x0, torch.Generator().manual_seed(3))
    base = objective.base(model, x0, torch.Generator().manual_seed(3))
    assert torch.equal(out["loss"], base["loss"] + 0.5 * isotropy_penalty(base["eps_pred"]))
    out["loss"].backward()
    assert all(p.grad is not None for p in model.net.parameters())


def test_self_perceptual_predictions_remake_the_noisy_input():
    model = _sp_model()
    objective = Experiment.load("toy/self_perceptual").build_objective(model)
    x0, eps = torch.randn(16, 2), torch.randn(16, 2)
    sigma = torch.cat([torch.logspace(-2, 2, 15), torch.tensor([math.inf])])  # the zero-SNR step included
    out = objective.loss_at(model, x0, eps, sigma, sigma.flip(0))
    alpha = torch.where(sigma.isinf(), 0.0, 1 / torch.sqrt(1 + sigma.square()))[:, None]
    s = torch.sqrt(1 - alpha.square())
    assert out["x0_pred"].requires_grad and out["eps_pred"].requires_grad
    torch.testing.assert_close(alpha * out["x0_pred"] + s * out["eps_pred"], alpha * x0 + s * eps)


def test_a_penalty_of_weight_zero_over_any_base_is_that_base_bit_for_bit():
    model = _sp_model()
    objective = Experiment.load("toy/self_perceptual", [ISO_OVER_SP.replace("0.5", "0")]).build_objective(model)
    x0 = torch.randn(8, 2)
    out = objective(model, x0, torch.Generator().manual_seed(1))
    assert torch.equal(out["loss"], objective.base(model, x0, torch.Generator().manual_seed(1))["loss"])


def test_sadm_takes_a_nested_base_and_refuses_to_be_one():
    experiment = Experiment.load("toy/sadm", ["objective.base={kind: iso, weight: 0.1}", "network.init_from=null"])
    objective = experiment.build_objective(experiment.build_model())
    assert isinstance(objective.base, IsoLoss) and objective.base.weight == 0.1
    with pytest.raises(ValueError, match="outermost"):
        Experiment.load("toy/iso", ["objective.base={kind: sadm}"]).build_objective()
    with pytest.raises(ValueError, match="inside it"):
        Experiment.load(
            "toy/iso", ["objective.base={kind: denoising}", "objective.label_dropout=0.1"]
        ).build_objective()
    with pytest.raises(ValueError, match="objective.base.weight"):
        Experiment.load("toy/sadm", ["objective.base={kind: iso, wieght: 0.1}"])
    with pytest.raises(ValueError, match="objective.base.kind"):
        Experiment.load("toy/sadm", ["objective.base={kind: nope}"])


def test_a_base_without_the_prediction_a_penalty_needs_is_an_error():
    experiment = Experiment.load("toy/bcm", ["objective={kind: iso, weight: 0.1, base: {kind: bcm}}"])
    model = experiment.build_model()
    with pytest.raises(ValueError, match="eps_pred"):
        experiment.build_objective(model)(model, torch.randn(8, 2))
