"""The self-perceptual objective (Lin & Yang 2024) and what it stands on: zero terminal SNR, the terminal step of
the denoiser and of DDIM, guidance with rescale, middle-block features, the configs and the Stable Diffusion configs.

Known answers (the identities of chapter 5): the loss vanishes for the exact prediction and, in the paper form, at
t' = t; the re-noised difference is sin(phi' - phi)(v_hat - v), or cos(phi')(x0_hat - x0) with the same noise; an
affine frozen network gives sin^2(phi' - phi) ||W (v_hat - v)||^2.
"""

import json
import math

import pytest
import torch
from PIL import Image
from torch import nn

from diffbook.cli import main as cli_main
from diffbook.config import read_config
from diffbook.diffusion import DDPM, Denoiser, vp_coefficients
from diffbook.experiments import Experiment
from diffbook.metrics.features import class_agreement
from diffbook.nets import DiffusersUNet, TimeMLP, TimeMLPEncoder, UNet, UNetEncoder, middle_block_encoder, unet_preset
from diffbook.objectives import DenoisingLoss, SelfPerceptualLoss, frozen_middle_block_encoder
from diffbook.objectives.self_perceptual import renoise_pair, x0_eps_from_v
from diffbook.samplers import ddim_sample, ddpm_sample, timesteps
from diffbook.samplers.guidance import GuidedDenoiser, guide
from diffbook.train import train

INF = math.inf


def _process(T: int = 1000) -> DDPM:
    return DDPM(T=T, prediction="v", zero_terminal_snr=True)


def _unet(num_classes: int = 0, dtype=torch.float64) -> UNet:
    # init_zero=False: with zero-initialised residual branches most weights would get no gradient at first.
    torch.manual_seed(0)
    config = unet_preset("digits16", dropout=0.0, init_zero=False, num_classes=num_classes)
    return UNet(config).to(dtype)


class _FixedOutput(nn.Module):
    """A network that predicts a given ``v`` whatever its input (plus a parameter, for the gradient tests)."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.v = v
        self.offset = nn.Parameter(torch.zeros((), dtype=v.dtype))

    def forward(self, x, noise_labels, class_labels=None):
        return self.v + self.offset


class _Affine(nn.Module):
    """``F(x, t) = W x + b(t)``: the frozen network of the closed form; the bias depends on ``t'`` only."""

    def __init__(self, dim: int, features: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.W = torch.randn(features, dim, generator=generator, dtype=torch.float64)
        self.b = torch.randn(features, generator=generator, dtype=torch.float64)

    def forward(self, x, noise_labels, class_labels=None):
        return x.flatten(1) @ self.W.T + noise_labels[:, None] * self.b


def _draws(B: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, 1, 16, 16, generator=generator, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    v_hat = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    process = _process()
    t = torch.tensor([0, 10, 250, 500, 998, 999])[:B]
    t_prime = torch.tensor([999, 3, 700, 500, 0, 400])[:B]
    return x0, eps, v_hat, process.sigmas[t], process.sigmas[t_prime]


def _true_v(x0, eps, sigma):
    alpha, s = (c.reshape(-1, 1, 1, 1) for c in vp_coefficients(sigma))
    return alpha * eps - s * x0


def _objective(frozen: nn.Module, **options) -> SelfPerceptualLoss:
    return SelfPerceptualLoss(frozen.eval().requires_grad_(False), **options)


# The objective's identities


@pytest.mark.parametrize("form", ["paper", "same_noise"])
def test_loss_vanishes_for_the_exact_prediction_at_any_t_and_t_prime(form):
    x0, eps, _, sigma, sigma_prime = _draws()
    model = Denoiser(_FixedOutput(_true_v(x0, eps, sigma)), _process())
    objective = SelfPerceptualLoss.from_model(Denoiser(_unet(), _process()), form=form)
    out = objective.loss_at(model, x0, eps, sigma, sigma_prime)
    assert out["per_sample"].max() < 1e-24 and out["v_mse"].max() < 1e-28


def test_paper_form_vanishes_at_t_prime_equal_t_for_any_prediction_and_same_noise_does_not():
    x0, eps, v_hat, sigma, _ = _draws()
    model = Denoiser(_FixedOutput(v_hat), _process())
    frozen = Denoiser(_unet(), _process())
    paper = SelfPerceptualLoss.from_model(frozen).loss_at(model, x0, eps, sigma, sigma)
    same_noise = SelfPerceptualLoss.from_model(frozen, form="same_noise").loss_at(model, x0, eps, sigma, sigma)
    assert paper["per_sample"].max() < 1e-24
    finite = sigma.isfinite()  # the same-noise difference is -alpha' s dv: zero only where alpha' = 0
    assert (same_noise["per_sample"][finite] > 1e-12).all() and same_noise["per_sample"][~finite].max() < 1e-24


def test_renoised_difference_has_its_closed_form_in_float64():
    x0, eps, v_hat, sigma, sigma_prime = _draws()
    alpha, s = (c.reshape(-1, 1, 1, 1) for c in vp_coefficients(sigma))
    alpha_p, s_p = (c.reshape(-1, 1, 1, 1) for c in vp_coefficients(sigma_prime))
    phi, phi_p = torch.atan2(s, alpha), torch.atan2(s_p, alpha_p)
    x_t = alpha * x0 + s * eps
    x0_hat, eps_hat = x0_eps_from_v(v_hat, x_t, alpha, s)
    delta_v = v_hat - _true_v(x0, eps, sigma)
    # Reconstruction: any v_hat re-noised at t gives x_t back, and the errors are -s dv and alpha dv.
    torch.testing.assert_close(alpha * x0_hat + s * eps_hat, x_t, rtol=0, atol=1e-12)
    torch.testing.assert_close(x0_hat - x0, -s * delta_v, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_hat - eps, alpha * delta_v, rtol=0, atol=1e-12)
    predicted, real = renoise_pair(x0, eps, x0_hat, eps_hat, alpha_p, s_p, "paper")
    torch.testing.assert_close(predicted - real, torch.sin(phi_p - phi) * delta_v, rtol=0, atol=1e-12)
    predicted, real = renoise_pair(x0, eps, x0_hat, eps_hat, alpha_p, s_p, "same_noise")
    torch.testing.assert_close(predicted - real, torch.cos(phi_p) * (x0_hat - x0), rtol=0, atol=1e-12)
    torch.testing.assert_close(predicted - real, -torch.sin(phi) * torch.cos(phi_p) * delta_v, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", ["paper", "same_noise"])
def test_affine_frozen_network_gives_the_closed_form_loss(form):
    x0, eps, v_hat, sigma, sigma_prime = _draws()
    affine = _Affine(x0[0].numel(), 7)
    out = _objective(affine, form=form).loss_at(Denoiser(_FixedOutput(v_hat), _process()), x0, eps, sigma, sigma_prime)
    alpha, s = vp_coefficients(sigma)
    alpha_p, s_p = vp_coefficients(sigma_prime)
    phi, phi_p = torch.atan2(s, alpha), torch.atan2(s_p, alpha_p)
    gain = torch.sin(phi_p - phi) if form == "paper" else torch.sin(phi) * torch.cos(phi_p)
    W_dv = (v_hat - _true_v(x0, eps, sigma)).flatten(1) @ affine.W.T
    expected = gain**2 * W_dv.square().mean(dim=1)
    torch.testing.assert_close(out["per_sample"], expected, rtol=1e-10, atol=1e-20)
    torch.testing.assert_close(out["loss"], expected.mean(), rtol=1e-10, atol=1e-20)


def test_frozen_network_gets_no_gradient_and_the_online_network_does():
    """The no_grad pitfall: were the predicted branch run without autograd, the online gradients would vanish."""
    model = Denoiser(_unet(num_classes=10), _process())
    objective = SelfPerceptualLoss.from_model(model, label_dropout=0.2)
    x0 = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    labels = torch.randint(0, 10, (8,))
    objective(model, (x0, labels), torch.Generator().manual_seed(0))["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in objective.frozen.parameters())
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g.abs().sum() == 0]


def test_frozen_copy_holds_the_encoder_only_and_keeps_the_initial_weights_while_the_model_trains():
    model = Denoiser(_unet(dtype=torch.float32), _process())
    objective = SelfPerceptualLoss.from_model(model)
    encoder_parts = (model.net.embed, model.net.conv_in, model.net.enc, model.net.mid)
    encoder_size = sum(p.numel() for part in encoder_parts for p in part.parameters())
    assert sum(p.numel() for p in objective.frozen.parameters()) == encoder_size
    assert encoder_size < sum(p.numel() for p in model.parameters())
    assert not objective.frozen.training
    initial = {k: v.clone() for k, v in objective.frozen.state_dict().items()}
    online_before = model.net.mid[0].res.conv0.weight.detach().clone()
    data = torch.randn(32, 1, 16, 16)
    train(model, objective, data, steps=3, batch_size=8, lr=1e-3, progress=False)
    assert all(torch.equal(initial[k], v) for k, v in objective.frozen.state_dict().items())
    assert not torch.equal(model.net.mid[0].res.conv0.weight, online_before)


def test_bad_options_are_errors():
    frozen = frozen_middle_block_encoder(_unet())
    with pytest.raises(ValueError, match="form"):
        SelfPerceptualLoss(frozen, form="ours")
    with pytest.raises(ValueError, match="trainable"):
        SelfPerceptualLoss(UNetEncoder(_unet()))
    with pytest.raises(ValueError, match="v-prediction"):
        x0 = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
        SelfPerceptualLoss(frozen)(Denoiser(_unet(), DDPM(prediction="eps")), x0)


# Middle-block features


def test_unet_encoder_equals_the_middle_block_output_of_a_full_forward():
    net = _unet(num_classes=10)
    seen = {}
    net.mid[-1].register_forward_hook(lambda module, inputs, output: seen.update(mid=output))
    x, t, labels = torch.randn(3, 1, 16, 16, dtype=torch.float64), torch.tensor([0.0, 500.0, 999.0]), torch.arange(3)
    net(x, t, labels)
    torch.testing.assert_close(middle_block_encoder(net)(x, t, labels), seen["mid"], rtol=0, atol=0)


def _tiny_diffusers_unet(cross_attention_dim: int = 12):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=2,
        norm_num_groups=4,
    )


def test_diffusers_encoder_equals_the_mid_block_output_of_a_full_forward():
    unet = _tiny_diffusers_unet()
    seen = {}
    unet.mid_block.register_forward_hook(lambda module, inputs, output: seen.update(mid=output))
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 999.0]), torch.randn(2, 5, 12)
    unet(x, t, encoder_hidden_states=text)
    for net in (unet, DiffusersUNet(unet)):
        torch.testing.assert_close(middle_block_encoder(net)(x, t, text), seen["mid"], rtol=0, atol=0)
    frozen = frozen_middle_block_encoder(DiffusersUNet(unet))
    assert sum(p.numel() for p in frozen.parameters()) < sum(p.numel() for p in unet.parameters())


@pytest.mark.parametrize(("depth", "kept"), [(1, 1), (3, 2), (4, 2)])
def test_time_mlp_encoder_equals_the_middle_hidden_layer_of_a_full_forward(depth, kept):
    torch.manual_seed(0)
    mlp = TimeMLP(hidden=16, depth=depth, emb_dim=8, num_classes=3).double()
    seen = {}
    following = mlp.layers[kept] if kept < depth else mlp.out  # the layer that reads the middle activations
    following.register_forward_hook(lambda module, inputs, output: seen.update(mid=inputs[0]))
    x, t, labels = torch.randn(5, 2, dtype=torch.float64), torch.tensor([0.0, 3.0, 3.0, 500.0, 999.0]), None
    mlp(x, t, labels)
    encoder = middle_block_encoder(mlp)
    assert isinstance(encoder, TimeMLPEncoder) and len(encoder.layers) == kept
    torch.testing.assert_close(encoder(x, t, labels), seen["mid"], rtol=0, atol=1e-15)
    labels = torch.tensor([0, 1, 2, 0, 1])
    mlp(x, t, labels)
    torch.testing.assert_close(encoder(x, t, labels), seen["mid"], rtol=0, atol=1e-15)


def test_self_perceptual_loss_on_a_time_mlp_vanishes_at_t_prime_equal_t_and_trains_the_mlp():
    torch.manual_seed(0)
    model = Denoiser(TimeMLP(hidden=16, depth=3, emb_dim=8).double(), _process())
    objective = SelfPerceptualLoss.from_model(model)
    frozen_size = sum(p.numel() for p in objective.frozen.parameters())
    assert frozen_size < sum(p.numel() for p in model.parameters())
    x0, eps = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    sigma = model.process.sigmas[torch.tensor([0, 10, 250, 500, 998, 999])]
    assert objective.loss_at(model, x0, eps, sigma, sigma)["per_sample"].max() < 1e-24
    objective.loss_at(model, x0, eps, sigma, sigma.flip(0))["loss"].backward()
    assert all(p.grad is None for p in objective.frozen.parameters())
    assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0


def test_middle_block_encoder_rejects_other_networks():
    with pytest.raises(ValueError, match="no middle-block encoder"):
        middle_block_encoder(nn.Linear(2, 2))


# What the chapter measures: classifier agreement and the cost of a step


def test_class_agreement_reads_the_softmax_of_the_labels():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]))
    with_labels = class_agreement(logits, torch.tensor([0, 1]))
    assert with_labels["confidence"] == pytest.approx((0.7 + 0.3) / 2) and with_labels["accuracy"] == 0.5
    assert class_agreement(logits) == {"confidence": pytest.approx((0.7 + 0.6) / 2)}


# Zero terminal SNR: the schedule, the denoiser and the losses at the last step


def test_zero_terminal_snr_schedule():
    plain, rescaled = DDPM(), _process()
    assert rescaled.alpha_bar[-1] == 0 and rescaled.betas[-1] == 1 and rescaled.sigmas[-1] == INF
    assert rescaled.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
    snr = rescaled.alpha_bar / (1 - rescaled.alpha_bar)
    assert (snr[1:] < snr[:-1]).all()
    torch.testing.assert_close(torch.cumprod(1 - rescaled.betas, 0), rescaled.alpha_bar, rtol=1e-10, atol=1e-14)
    assert rescaled.sigma_max == rescaled.sigmas[-2].item() and math.isfinite(rescaled.sigma_max)
    levels = torch.tensor([INF, rescaled.sigma_max], dtype=torch.float64)
    assert rescaled.sigma_to_t(levels).tolist() == [999.0, 998.0]
    assert timesteps(1000, 50, "trailing")[:3] == [999, 979, 959] and timesteps(1000, 50, "trailing")[-1] == 19


def test_zero_terminal_snr_is_refused_for_eps_prediction():
    with pytest.raises(ValueError, match="eps"):
        DDPM(zero_terminal_snr=True)


def test_schedule_matches_diffusers_ddim_scheduler_on_the_model_cards_config():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
    )
    process = DDPM(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction="v", zero_terminal_snr=True)
    torch.testing.assert_close(process.alpha_bar.float(), scheduler.alphas_cumprod, rtol=1e-5, atol=1e-7)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == timesteps(1000, 50, "trailing")


def test_denoiser_at_the_terminal_step_returns_minus_v():
    v = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    model = Denoiser(_FixedOutput(v), _process())
    torch.testing.assert_close(model.forward_vp(torch.randn_like(v), INF), -v, rtol=0, atol=0)
    x_vp, sigma = torch.randn_like(v), 3.0
    torch.testing.assert_close(model.forward_vp(x_vp, sigma), model(x_vp * math.sqrt(1 + sigma**2), sigma))


def test_denoising_loss_trains_the_terminal_step_towards_minus_x0():
    """At alpha_bar = 0 the v target is -x0 and the predicted noise is the input itself."""
    process = DDPM(T=4, schedule="cosine", prediction="v", zero_terminal_snr=True)  # 1 draw in 4 is terminal
    x0 = torch.randn(64, 1, 16, 16, dtype=torch.float64)
    model = Denoiser(_FixedOutput(torch.zeros_like(x0)), process)
    out = DenoisingLoss()(model, x0, torch.Generator().manual_seed(0))
    terminal = out["sigma"].isinf()
    assert terminal.any() and torch.isfinite(out["loss"])
    torch.testing.assert_close(out["per_sample"][terminal], x0[terminal].flatten(1).square().mean(1))


class _GaussianDenoiser:
    """The exact ``E[x0 | x]`` for ``x0 ~ N(MEAN, STD^2)``, in both coordinates (the VP one holds at sigma = inf)."""

    MEAN, STD = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5

    def forward_vp(self, x_vp, sigma):
        alpha, s = vp_coefficients(torch.tensor(sigma, dtype=torch.float64))
        gain = self.STD**2 * alpha / (alpha**2 * self.STD**2 + s**2)
        return self.MEAN + gain * (x_vp - alpha * self.MEAN)

    def __call__(self, x, sigma):
        return self.forward_vp(x / math.sqrt(1 + sigma**2), sigma)


def test_ddim_trailing_from_the_terminal_step_reproduces_the_gaussian():
    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = ddim_sample(_GaussianDenoiser(), _process(), noise, 200, spacing="trailing", return_trajectory=True)
    assert out.trajectory_sigmas[0] == INF and torch.equal(out.trajectory[0], noise)
    assert all(torch.isfinite(state).all() for state in out.trajectory)
    assert (out.samples.mean(0) - _GaussianDenoiser.MEAN).abs().max() < 0.02
    assert (out.samples.std(0) / _GaussianDenoiser.STD - 1).abs().max() < 0.03
    ancestral = ddpm_sample(_GaussianDenoiser(), _process(), noise, 250, generator=torch.Generator().manual_seed(1))
    assert (ancestral.samples.std(0) / _GaussianDenoiser.STD - 1).abs().max() < 0.03


def test_a_denoiser_without_a_vp_form_cannot_start_at_infinite_noise():
    with pytest.raises(ValueError, match="forward_vp"):
        ddim_sample(lambda x, sigma: x, _process(), torch.randn(4, 2), 10, spacing="trailing")


def test_ddim_trailing_matches_diffusers_ddim_scheduler_step_by_step():
    diffusers = pytest.importorskip("diffusers")
    process = DDPM(schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction="v", zero_terminal_snr=True)
    scheduler = diffusers.DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
    )
    net = _unet(dtype=torch.float32).eval()
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = ddim_sample(Denoiser(net, process), process, noise, 10, spacing="trailing").samples
    scheduler.set_timesteps(10)
    x = noise
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(x, t.float().expand(2)), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


# Classifier-free guidance with rescale


def test_guidance_rescale_zero_is_plain_guidance_and_one_restores_the_conditional_std():
    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(5, 3, 8, 8, generator=generator), torch.randn(5, 3, 8, 8, generator=generator)
    torch.testing.assert_close(guide(cond, uncond, 7.5, 0.0), uncond + 7.5 * (cond - uncond))
    rescaled = guide(cond, uncond, 7.5, 1.0)
    torch.testing.assert_close(rescaled.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))
    torch.testing.assert_close(guide(cond, uncond, 1.0, 0.7), cond)
    with pytest.raises(ValueError, match="rescale"):
        guide(cond, uncond, 7.5, 1.5)


def test_guidance_rescale_matches_diffusers():
    pytest.importorskip("diffusers")
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    generator = torch.Generator().manual_seed(1)
    cond, uncond = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    expected = rescale_noise_cfg(uncond + 7.5 * (cond - uncond), cond, guidance_rescale=0.7)
    torch.testing.assert_close(guide(cond, uncond, 7.5, 0.7), expected)


class _LabelShift(nn.Module):
    """``v = label + 0 * x``: the null class (None) predicts zero."""

    def forward(self, x, noise_labels, class_labels=None):
        shift = torch.zeros(len(x)) if class_labels is None else class_labels.float()
        return shift.reshape(-1, 1) + 0 * x


def test_guided_denoiser_extrapolates_the_raw_output_and_scale_one_is_the_conditional_model():
    model = Denoiser(_LabelShift(), _process())
    labels, x = torch.tensor([1, 2]), torch.randn(2, 3)
    torch.testing.assert_close(GuidedDenoiser(model, 3.0).forward_vp(x, INF, labels), -3.0 * labels[:, None] + 0 * x)
    torch.testing.assert_close(GuidedDenoiser(model, 1.0).forward_vp(x, 2.0, labels), model.forward_vp(x, 2.0, labels))
    out = ddim_sample(GuidedDenoiser(model, 3.0), model.process, x, 5, spacing="trailing", class_labels=labels)
    assert torch.isfinite(out.samples).all() and out.nfe == 5
    with pytest.raises(ValueError, match="class labels"):
        GuidedDenoiser(model, 3.0).forward_vp(x, 2.0)


# Configs and the train command


def test_fine_tuning_configs_start_from_their_pretraining_runs():
    for pretrain, finetune in [("sp_pretrain", "self_perceptual"), ("sp_pretrain_cond", "self_perceptual_cond")]:
        base, fine = read_config(f"digits/{pretrain}"), read_config(f"digits/{finetune}")
        assert fine["network"].pop("init_from") == f"runs/digits-{pretrain}/checkpoint.pt"
        assert fine["network"] == base["network"] and fine["process"] == base["process"]
        assert fine["objective"]["label_dropout"] == base["objective"]["label_dropout"]
        assert fine["sample"] == dict(sampler="ddim", steps=50, spacing="trailing", eta=0.0, clip_denoised=None)
    base, fine = read_config("toy/sp_pretrain"), read_config("toy/self_perceptual")
    assert fine["network"].pop("init_from") == "runs/toy-sp_pretrain/checkpoint.pt"
    assert (
        fine["network"] == base["network"] and fine["process"] == base["process"] and fine["sample"] == base["sample"]
    )
    assert "extension" in read_config("cifar10/self_perceptual")["source"]
    with pytest.raises(ValueError, match="build_objective\\(model\\)"):
        Experiment.load("digits/self_perceptual").build_objective()


def test_train_command_pretrains_then_fine_tunes_from_the_pretrained_weights(tmp_path, capsys):
    short = ["train.steps=2", "train.batch_size=8", "train.log_every=1", "train.checkpoint_every=2"]
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert cli_main(["train", "--config", "digits/sp_pretrain_cond", "--run-dir", str(pre), *short]) == 0
    init = f"network.init_from={pre / 'checkpoint.pt'}"
    assert cli_main(["train", "--config", "digits/self_perceptual_cond", "--run-dir", str(fine), init, *short]) == 0
    pretrained = torch.load(pre / "checkpoint.pt", weights_only=True)
    finetuned = torch.load(fine / "checkpoint.pt", weights_only=True)
    assert finetuned["model"].keys() == pretrained["model"].keys()  # the frozen copy is not in the checkpoint
    assert any(not torch.equal(finetuned["model"][k], pretrained["ema"][k]) for k in pretrained["ema"])
    assert len((fine / "log.jsonl").read_text().splitlines()) == 2
    missing = f"network.init_from={tmp_path / 'none.pt'}"
    assert cli_main(["train", "--config", "digits/self_perceptual", "--run-dir", str(tmp_path / "x"), missing]) == 2
    assert "init_from" in capsys.readouterr().err


def test_objective_kind_self_perceptual_builds_from_the_model():
    cfg = Experiment.load("digits/self_perceptual")
    model = cfg.build_model()
    objective = cfg.build_objective(model)
    assert isinstance(objective, SelfPerceptualLoss) and objective.form == "paper"


# The Stable Diffusion script, on a tiny random model


def _tiny_stable_diffusion(root):
    """A diffusers Stable Diffusion folder with random tiny parts, and a 12-token CLIP vocabulary."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    _tiny_diffusers_unet().save_pretrained(root / "unet")
    torch.manual_seed(0)
    diffusers.AutoencoderKL(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    ).save_pretrained(root / "vae")
    vocab = ["<|startoftext|>", "<|endoftext|>", "a</w>", "red</w>", "blue</w>", "square</w>"]
    vocab += ["a", "r", "e", "d", "s", "q", "re"]
    (root / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\nr e\n")
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=8)
    tokenizer.save_pretrained(root / "tokenizer")
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=12,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    transformers.CLIPTextModel(text_config).save_pretrained(root / "text_encoder")
    diffusers.DDIMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True).save_pretrained(
        root / "scheduler"
    )


def _image_caption_folder(root):
    root.mkdir()
    for i, (color, caption) in enumerate([((255, 0, 0), "a red square"), ((0, 0, 255), "a blue square")]):
        Image.new("RGB", (20, 18), color).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(caption)


def _sd_overrides(weights, data) -> list[str]:
    """The tiny model at 16 pixels; its VAE halves, so the latents are 8 x 8."""
    return [
        f"network.weights={weights}", f"data.root={data}", "data.resolution=16", "network.overrides.resolution=8",
        "train.batch_size=2", "train.num_workers=0", "train.steps=2", "train.log_every=1", "train.precision=fp32",
        "train.ema_halflife_images=100", "sample.steps=3",
    ]  # fmt: skip


def test_the_sd21_configs_train_export_and_sample_a_tiny_random_model(tmp_path, capsys):
    weights, data, run = tmp_path / "sd", tmp_path / "data", tmp_path / "run"
    _tiny_stable_diffusion(weights)
    _image_caption_folder(data)
    overrides = _sd_overrides(weights, data)
    status = cli_main(["train", "--config", "sd21/mse", "--run-dir", str(run), *overrides])
    assert status == 0, capsys.readouterr().err
    assert len((run / "log.jsonl").read_text().splitlines()) == 2
    assert cli_main(["export-diffusers", "--ckpt", str(run / "checkpoint.pt"), "--out", str(run)]) == 0
    assert (run / "unet" / "config.json").is_file() and (run / "scheduler" / "scheduler_config.json").is_file()
    scheduler = json.loads((run / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["timestep_spacing"], scheduler["prediction_type"]) == ("trailing", "v_prediction")
    assert scheduler["rescale_betas_zero_snr"] is True
    stage2 = [*overrides, f"network.overrides.unet={run / 'unet'}"]
    assert cli_main(["train", "--config", "sd21/self_perceptual", "--run-dir", str(tmp_path / "sp"), *stage2]) == 0
    for scale, rescale in [(1.0, 0.0), (7.5, 0.7)]:
        argv = ["sample", "--ckpt", str(run / "checkpoint.pt"), "--prompt", "a red square", "--seeds", "0"]
        argv += [
            "--out",
            str(tmp_path / f"samples{scale}"),
            f"sample.cfg_scale={scale}",
            f"sample.cfg_rescale={rescale}",
        ]
        assert cli_main(argv) == 0, capsys.readouterr().err
        with Image.open(tmp_path / f"samples{scale}" / "000000.png") as image:
            assert image.size == (16, 16)


def test_sd21_explains_missing_weights_data_and_prompts(tmp_path, capsys):
    from diffbook.data.captions import image_caption_pairs

    argv = ["train", "--config", "sd21/mse", "--run-dir", str(tmp_path / "run"), f"network.weights={tmp_path / 'no'}"]
    assert cli_main([*argv, f"data.root={tmp_path}"]) == 2
    assert "stable-diffusion-2-1-base" in capsys.readouterr().err
    weights = tmp_path / "sd"
    _tiny_stable_diffusion(weights)
    fresh = [
        "train",
        "--config",
        "sd21/self_perceptual",
        "--run-dir",
        str(tmp_path / "sp"),
        "network.overrides.unet=null",
    ]
    assert cli_main([*fresh, *_sd_overrides(weights, tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no images"):
        image_caption_pairs(tmp_path)
    (tmp_path / "0.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="caption"):
        image_caption_pairs(tmp_path)
