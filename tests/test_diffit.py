"""DiffiT and DiT: parameter counts with known answers, TMSA's algebra, windows, guidance, learned variance,
latents through a VAE. Large models are built on the meta device only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diffbook.cli import main
from diffbook.config import read_config
from diffbook.data.latents import LatentDataset
from diffbook.diffusion import DDPM, EDM, Denoiser
from diffbook.experiments import Experiment
from diffbook.nets import (
    TIME_MODES,
    DiffiTUNet,
    DiT,
    LatentDiffiT,
    diffit_unet_preset,
    dit_preset,
    latent_diffit_preset,
)
from diffbook.nets.diffit import mlp_ratio_for_budget, unet_parameter_count
from diffbook.nets.tmsa import WindowAttention, drop_time_keys, window_partition, window_reverse
from diffbook.nets.transformer import sincos_pos_embed_2d
from diffbook.nets.vae import SD_VAE, load_vae, vae_missing_message
from diffbook.objectives.vlb import HybridLoss, variance_bound_term
from diffbook.samplers import GuidedDenoiser, ancestral_variance, ddpm_sample, power_cosine_scale


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def meta_count(cls, config) -> int:
    with torch.device("meta"):  # counts without allocating a single weight
        return trainable(cls(config))


# Parameter counts (the paper's Tables 1, 2 and 9; book: diffit_decisions). The fixed position embedding is a
# buffer, so it is excluded.


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("imagenet256", 561_035_232), ("imagenet256_d30", 600_906_752), ("imagenet512", 562_382_816)],
)
def test_latent_diffit_has_the_derived_parameter_counts(preset, expected):
    count = meta_count(LatentDiffiT, latent_diffit_preset(preset))
    assert count == expected
    if preset == "imagenet256":
        assert count / 1e6 == pytest.approx(561.0, abs=0.05)  # Table 9


def test_dit_xl2_has_675m_parameters_under_the_same_counter():
    assert meta_count(DiT, dit_preset("XL/2")) == 674_834_720  # DiT Table 1 / DiffiT Table 9: 675 M


def test_latent_diffit_time_projection_costs_three_d_squared_per_block_and_saves_adaln_parameters():
    config = latent_diffit_preset("imagenet256")
    D, depth = config.dim, config.depth
    without_keys = meta_count(LatentDiffiT, latent_diffit_preset("imagenet256", time_keys=False))
    assert meta_count(LatentDiffiT, config) - without_keys == depth * (D * D + D)
    # TMSA's 3 projections per block against adaLN-Zero's 6, with DiT's conditioned final layer on top.
    dit_minus_diffit = meta_count(DiT, dit_preset("XL/2")) - meta_count(LatentDiffiT, config)
    table = (2 * config.grid - 1) ** 2 * config.num_heads
    assert dit_minus_diffit == depth * (3 * D * D + 3 * D - table) + 2 * D * D + 2 * D


@pytest.mark.parametrize(
    ("preset", "expected", "stated_millions"),
    [("cifar10", 15_871_427, 15.9), ("cifar10_l4", 28_684_803, 28.7), ("ffhq64", 23_797_979, 23.8)],
)
def test_image_diffit_unet_counts_match_the_derived_counts(preset, expected, stated_millions):
    count = meta_count(DiffiTUNet, diffit_unet_preset(preset))
    assert count == expected and count / 1e6 == pytest.approx(stated_millions, abs=0.05)


def test_one_resblock_costs_what_its_layers_add_up_to():
    # 0.54 M at C = 128 and 1.77 M at C = 256 (GN, conv3x3, TMSA with a 512-dim token, bias table, MLP).
    net = DiffiTUNet(diffit_unet_preset("cifar10", num_blocks=(1, 1, 1)))
    assert trainable(net.encoder[0][0]) == 542_788 and trainable(net.bottleneck[0]) == 1_773_704


def test_time_mode_variants_build_with_their_budgets(capsys):
    budgets = {
        mode: (
            meta_count(DiffiTUNet, diffit_unet_preset("digits16", time_mode=mode)),
            meta_count(DiffiTUNet, diffit_unet_preset("cifar10", time_mode=mode)),
        )
        for mode in TIME_MODES
    }
    with capsys.disabled():
        print("\ntime_mode: digits16 / cifar10 DiffiT U-Net parameters", budgets)
    assert budgets["mlp"] == budgets["token"]  # both spend one time_dim -> C map per block
    assert budgets["tmsa"][1] == 15_871_427


def test_equal_budget_ratios_recover_the_default_and_match_every_mode_within_a_percent():
    base = diffit_unet_preset("digits16")
    budget = unet_parameter_count(base)
    assert budget == meta_count(DiffiTUNet, base) == 626_417
    assert mlp_ratio_for_budget(base, budget) == 4.0  # the preset is its own budget
    for mode in TIME_MODES:
        config = diffit_unet_preset("digits16", time_mode=mode)
        ratio = mlp_ratio_for_budget(config, budget)
        matched = unet_parameter_count(diffit_unet_preset("digits16", time_mode=mode, mlp_ratio=ratio))
        assert abs(matched - budget) / budget < 0.01, (mode, ratio, matched)
        # adaLN-Zero spends more on time than TMSA, the MLP and token modes less: the MLP gives or takes the rest
        expected = {"adaln": -1, "mlp": 1, "token": 1}.get(mode, 0)
        assert (ratio > 4.0) - (ratio < 4.0) == expected or (mode == "bias" and abs(ratio - 4.0) <= 0.125)


# Windows


def test_window_partition_and_reverse_are_exact_inverses():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2, 6, 16, 5)
    assert torch.equal(windows[0, 1], x[0, 0:4, 4:8].reshape(16, 5))  # row-major windows, row-major tokens
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)
    assert torch.equal(window_partition(x[:, :8, :8], 8)[:, 0], x[:, :8, :8].reshape(2, 64, 5))  # one window
    with pytest.raises(ValueError, match="does not tile"):
        window_partition(x, 5)


def reference_attention(attn: WindowAttention, x: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
    """Windowed multi-head attention with the bias, written out with einsum, with the time terms added to q, k, v
    (zero for plain attention). A window as large as the grid is written as global attention over all tokens."""
    B, H, W, C = x.shape
    w, h = attn.window, attn.num_heads
    tokens = x.reshape(B, 1, H * W, C) if w == H == W else window_partition(x, w)
    qkv = attn.qkv(tokens) + attn.time_projections(x_t)[:, None, None]
    q, k, v = (t.unflatten(-1, (h, C // h)) for t in qkv.chunk(3, dim=-1))  # (B, nW, N, heads, d)
    logits = torch.einsum("bwnhd,bwmhd->bwhnm", q, k) / (C // h) ** 0.5 + attn.bias()
    out = attn.proj(torch.einsum("bwhnm,bwmhd->bwnhd", logits.softmax(-1), v).flatten(-2))
    return out.reshape(B, H, W, C) if w == H == W else window_reverse(out, w, H, W)


@pytest.mark.parametrize("window", [4, 8])  # 8 = the grid: one window, global attention
def test_tmsa_with_zero_time_projections_is_windowed_attention_with_the_bias(window):
    torch.manual_seed(0)
    attn = WindowAttention(16, 4, window, time_dim=8).double()
    nn.init.normal_(attn.bias.table)
    nn.init.zeros_(attn.time_qkv.weight)
    nn.init.zeros_(attn.time_qkv.bias)
    x, x_t = torch.randn(2, 8, 8, 16, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    out = attn(x, x_t)
    torch.testing.assert_close(out, reference_attention(attn, x, x_t), rtol=0, atol=1e-12)
    # With time: still the reference, the time terms entering q, k, v as Eq. 3-5 say ...
    with torch.no_grad():
        attn.time_qkv.weight.normal_()
        attn.time_qkv.bias.normal_()
    with_time = attn(x, x_t)
    assert not torch.allclose(with_time, out)
    torch.testing.assert_close(with_time, reference_attention(attn, x, x_t), rtol=0, atol=1e-12)
    # ... and, as the rows of A sum to one, the value-side term is a constant output bias: A (V_s + v_t) =
    # A V_s + v_t, which the output projection maps to W_o v_t.
    v_t = attn.time_projections(x_t)[:, 32:]
    with torch.no_grad():
        attn.time_qkv.weight[32:] = 0
        attn.time_qkv.bias[32:] = 0
    constant = (v_t @ attn.proj.weight.T)[:, None, None]
    torch.testing.assert_close(with_time, attn(x, x_t) + constant, rtol=0, atol=1e-12)


@pytest.mark.parametrize("time_input", ["qkv", "bias", "token"])
def test_attention_probabilities_are_what_the_fused_attention_applies(time_input):
    torch.manual_seed(0)
    attn = WindowAttention(16, 4, 4, time_dim=8, time_input=time_input).double()
    x, x_t = torch.randn(2, 8, 8, 16, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    probs = attn.attention_probabilities(x, x_t)  # (B, nW, heads, N, M)
    keys = 17 if time_input == "token" else 16
    assert probs.shape == (2, 4, 4, 16, keys)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 4, 16, dtype=torch.float64))
    _, _, v, _ = attn._queries_keys_values(x, x_t)
    values = v.unflatten(-1, (4, 4)).transpose(1, 2).unflatten(0, (2, 4))  # (B, nW, heads, M, d)
    out = attn.proj((probs @ values).transpose(2, 3).flatten(-2))  # (B, nW, N, C)
    torch.testing.assert_close(attn(x, x_t), window_reverse(out, 4, 8, 8), rtol=0, atol=1e-12)


def test_the_key_time_projection_has_zero_gradient_and_removing_it_changes_nothing():
    torch.manual_seed(0)
    config = diffit_unet_preset("digits16")
    net = DiffiTUNet(config).double()
    nn.init.normal_(net.head[-1].weight, std=0.1)  # a non-zero output, so every weight gets a gradient
    x, t = torch.randn(2, 1, 16, 16, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    out = net(x, t)
    out.square().sum().backward()
    for block in [b.block for stage in (*net.encoder, net.bottleneck, *net.decoder) for b in stage]:
        grad_w, grad_b = block.attn.time_qkv.weight.grad, block.attn.time_qkv.bias.grad
        C = grad_w.shape[0] // 3
        assert grad_w[:C].abs().max() > 1e-6  # the query projection learns ...
        assert grad_w[C : 2 * C].abs().max() < 1e-12 and grad_b[C : 2 * C].abs().max() < 1e-12  # ... W_kt does not
    without = DiffiTUNet(diffit_unet_preset("digits16", time_keys=False)).double()
    without.load_state_dict(drop_time_keys(net.state_dict()))
    torch.testing.assert_close(without(x, t), out.detach(), rtol=0, atol=1e-12)


# Networks: shapes, conditioning, initialisation


def wake(net: nn.Module) -> None:
    """Give every zero-initialised layer (output layers, adaLN-Zero) random weights, so conditioning shows."""
    for module in net.modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.1)


@pytest.mark.parametrize("mode", list(TIME_MODES))
def test_every_time_mode_runs_in_both_diffit_networks(mode):
    x, t = torch.randn(2, 1, 16, 16), torch.randn(2)
    unet = DiffiTUNet(diffit_unet_preset("digits16", time_mode=mode))
    latent = LatentDiffiT(latent_diffit_preset("digits16", time_mode=mode, window=4))
    for net in (unet, latent):
        assert net(x, t).shape == x.shape
        assert torch.equal(net(x, t), torch.zeros_like(x))  # zero-initialised output layer
        wake(net)
        out = net(x, t)
        assert out.abs().sum() > 0 and not torch.allclose(out, net(x, t + 1))  # time reaches the output


def test_latent_models_are_class_conditional_and_split_their_learned_variance():
    torch.manual_seed(0)
    small = dict(in_channels=4, resolution=8, dim=32, depth=2, num_heads=4, num_classes=10, learn_sigma=True)
    for net in (LatentDiffiT(latent_diffit_preset("digits16", **small)), DiT(dit_preset("digits16", **small))):
        wake(net)
        x, t, y = torch.randn(3, 4, 8, 8), torch.rand(3) * 999, torch.tensor([0, 1, 2])
        out = net(x, t, y)
        assert out.shape == (3, 8, 8, 8)
        assert torch.equal(net(x, t), net(x, t, torch.full((3,), 10)))  # None is the null class
        assert not torch.allclose(out, net(x, t, y + 1))
        model = Denoiser(net, DDPM())
        x0, v = model.forward_vp_variance(x, 5.0, y)  # DDPM feeds the VP state and the step t to the network
        assert x0.shape == v.shape == x.shape
        torch.testing.assert_close(v, net(x, model.process.sigma_to_t(torch.full((3,), 5.0)), y)[:, 4:])
        assert model(x, 5.0, y).shape == x.shape


def test_dit_starts_as_the_identity_in_every_block():
    net = DiT(dit_preset("digits16"))
    tokens, c = torch.randn(2, 64, 96), torch.randn(2, 96)
    assert all(torch.equal(block(tokens, c), tokens) for block in net.blocks)


def test_the_position_embedding_is_mae_and_dits_sin_cos_table():
    emb = sincos_pos_embed_2d(8, 3)  # (9, 8): columns in the first half, rows in the second
    freqs = torch.tensor([1.0, 0.01])
    row, col = 1, 2
    expected = torch.cat([(col * freqs).sin(), (col * freqs).cos(), (row * freqs).sin(), (row * freqs).cos()])
    torch.testing.assert_close(emb[row * 3 + col], expected)


# Guidance (D17) and the learned variance


def test_power_cosine_schedule_is_one_at_the_last_step_and_the_scale_at_the_first():
    assert power_cosine_scale(4.4, 1000, 1000, 4.0).item() == pytest.approx(1.0, abs=1e-12)
    assert power_cosine_scale(4.4, 0, 1000, 4.0).item() == pytest.approx(4.4, abs=1e-12)
    t = torch.arange(0, 1001, 100)
    assert (power_cosine_scale(4.4, t, 1000, 1.0).diff() <= 0).all()  # monotone from s down to 1


class LinearNet(nn.Module):
    """A class-conditional stand-in: ``F = x + label`` per channel, with variance channels ``v = tanh(x)``."""

    def __init__(self, learn_sigma: bool = False) -> None:
        super().__init__()
        self.num_classes, self.learn_sigma = 10, learn_sigma

    def forward(self, x, noise_labels, class_labels=None):
        labels = torch.full((len(x),), 10) if class_labels is None else class_labels
        out = x + labels[:, None, None, None].to(x)
        return torch.cat([out, x.tanh()], dim=1) if self.learn_sigma else out


def test_guidance_at_scale_one_is_the_conditional_model_and_three_channels_leave_the_fourth():
    model = Denoiser(LinearNet(), DDPM())
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([1, 2])
    torch.testing.assert_close(GuidedDenoiser(model, 1.0)(x, 3.0, y), model(x, 3.0, y))
    torch.testing.assert_close(GuidedDenoiser(model, 1.0, power=4.0).forward_vp(x, 3.0, y), model.forward_vp(x, 3.0, y))
    cond, (c_skip, c_out, _, _) = model.raw_vp(x, 3.0, y)
    uncond, _ = model.raw_vp(x, 3.0, None)
    guided = torch.cat([uncond[:, :3] + 2.0 * (cond - uncond)[:, :3], cond[:, 3:]], dim=1)
    three_channels = GuidedDenoiser(model, 2.0, channels=3)
    torch.testing.assert_close(three_channels.forward_vp(x, 3.0, y), c_skip * x + c_out * guided)
    # The schedule: at the noise level of step t the scale is the power-cosine value of t.
    process = model.process
    sigma = float(process.sigmas[600])
    scheduled = GuidedDenoiser(model, 4.4, power=4.0).scale_at(sigma, x)
    assert scheduled.shape == (2, 1, 1, 1)
    torch.testing.assert_close(scheduled.flatten().double(), power_cosine_scale(4.4, 600, 1000, 4.0).expand(2))


def test_guided_learned_variance_comes_from_the_conditional_branch():
    model = Denoiser(LinearNet(learn_sigma=True), DDPM())
    x, y = torch.randn(2, 4, 4, 4), torch.tensor([1, 2])
    _, v = GuidedDenoiser(model, 3.0, channels=3).forward_vp_variance(x, 2.0, y)
    torch.testing.assert_close(v, x.tanh())
    with pytest.raises(ValueError, match="discrete process"):
        GuidedDenoiser(Denoiser(LinearNet(), EDM()), 2.0, power=4.0)


def test_learned_range_variance_interpolates_log_beta_and_log_beta_tilde():
    beta, ab, ab_prev = 0.02, 0.5, 0.51
    small = beta * (1 - ab_prev) / (1 - ab)
    v = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(
        ancestral_variance("learned", beta, ab, ab_prev, v),
        torch.tensor([small, (small * beta) ** 0.5, beta]),
    )


class ConstantVarianceNet(LinearNet):
    """``F = 0`` (eps-prediction) and a constant variance output ``v``."""

    def __init__(self, v: float) -> None:
        super().__init__(learn_sigma=True)
        self.v = v

    def forward(self, x, noise_labels, class_labels=None):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, self.v)], dim=1)


@pytest.mark.parametrize(("v", "fixed"), [(1.0, "large"), (-1.0, "small")])
def test_ddpm_with_learned_variance_at_the_ends_of_the_range_is_the_fixed_sampler(v, fixed):
    process, noise = DDPM(T=100), torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    model = Denoiser(ConstantVarianceNet(v), process)
    learned = ddpm_sample(model, process, noise, 10, "learned", generator=torch.Generator().manual_seed(0))
    expected = ddpm_sample(model, process, noise, 10, fixed, generator=torch.Generator().manual_seed(0))
    # Equal up to float32 rounding of exp(log beta): the same noise draws, the same means.
    torch.testing.assert_close(learned.samples, expected.samples, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="learn_sigma"):
        ddpm_sample(Denoiser(LinearNet(), process), process, noise, 2, "learned")


def test_the_variance_bound_vanishes_when_the_model_posterior_is_the_true_one():
    process = DDPM(T=100)
    t = torch.tensor([5, 60])
    x0, x_t = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4)
    zero = variance_bound_term(process, t, x0, x_t, x0, torch.full_like(x0, -1.0))  # v = -1: beta~, exact mean
    torch.testing.assert_close(zero, torch.zeros(2), rtol=0, atol=1e-6)
    # v = +1 is beta: KL(N(m, beta~) || N(m, beta)) = (beta~ / beta - 1 - log(beta~ / beta)) / 2, in bits.
    beta = process.betas[t]
    ratio = beta * (1 - process.alpha_bar[t - 1]) / (1 - process.alpha_bar[t]) / beta
    expected = (ratio - 1 - ratio.log()) / 2 / math.log(2)
    got = variance_bound_term(process, t, x0, x_t, x0, torch.ones_like(x0))
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-7)
    nll = variance_bound_term(process, torch.tensor([0, 0]), x0, x_t, x0, torch.zeros_like(x0))
    assert (nll > 0).all() and torch.isfinite(nll).all()  # t = 0: the decoder's negative log-likelihood


def test_the_hybrid_loss_trains_the_variance_channels():
    torch.manual_seed(0)
    config = dit_preset("digits16", in_channels=4, resolution=8, dim=32, depth=1, num_classes=10, learn_sigma=True)
    model = Denoiser(DiT(config), DDPM())
    batch = (torch.randn(4, 4, 8, 8), torch.tensor([0, 1, 2, 3]))
    out = HybridLoss(label_dropout=0.5)(model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["vb"].shape == (4,)
    out["loss"].backward()
    grad = model.net.final.linear.weight.grad.view(2, 2, 8, 32)  # (p, q, channel, dim), as unpatchify reads it
    assert grad[:, :, 4:].abs().sum() > 0 and grad[:, :, :4].abs().sum() > 0
    with pytest.raises(ValueError, match="learn_sigma"):
        HybridLoss()(Denoiser(DiT(dit_preset("digits16")), DDPM()), torch.randn(2, 1, 16, 16))


# Configs


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("cifar10/diffit", 15.87),
        ("ffhq64/diffit", 23.80),
        ("imagenet256/diffit", 561.04),
        ("imagenet512/diffit", 562.38),
        ("imagenet256/dit", 674.83),
        ("digits/diffit", 0.63),
        ("digits/diffit8", 0.63),
        ("digits/dit", 0.72),
    ],
)
def test_diffit_configs_build_the_networks_of_their_sources(name, millions):
    with torch.device("meta"):
        model = Experiment.load(name).build_model()
    assert trainable(model) / 1e6 == pytest.approx(millions, abs=0.01)


def test_the_latent_configs_follow_the_paper_and_d17():
    cfg = read_config("imagenet256/diffit")
    assert (cfg["train"]["batch_size"], cfg["train"]["lr"], cfg["process"]["T"]) == (256, 3e-4, 1000)
    assert 0.5 ** (256 / cfg["train"]["ema_halflife_images"]) == pytest.approx(0.9999, abs=1e-9)
    sampler = Experiment.from_config(cfg).sampler
    assert (sampler.steps, sampler.options.variance, sampler.options.cfg_power) == (250, "learned", 4.0)
    assert sampler.options.cfg_channels == 3  # D17: as the release, whose scales were tuned on channels 0-2
    assert read_config("imagenet512/diffit")["sample"]["cfg_scale"] == 1.49
    assert read_config("imagenet512/diffit")["sample"]["cfg_channels"] == 3


def test_a_guided_config_sampler_runs_a_small_class_conditional_model():
    overrides = [
        "network.preset=digits16",
        "network.overrides={learn_sigma: true, num_classes: 10, in_channels: 4, resolution: 8, depth: 1}",
        "process.T=50",
        "sample.steps=3",
    ]
    cfg = Experiment.load("imagenet256/diffit", overrides)
    model = cfg.build_model().eval()
    out = cfg.sampler(model, torch.randn(2, 4, 8, 8), torch.tensor([0, 3]), torch.Generator().manual_seed(0))
    assert out.samples.shape == (2, 4, 8, 8) and torch.isfinite(out.samples).all()


# Latents


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """A randomly initialised AutoencoderKL with SD's layout (4 latent channels, 8x down), saved as a folder."""
    from diffusers import AutoencoderKL

    path = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    vae.save_pretrained(path)
    return path


def write_image_folder(root, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / label / f"{k}.png")


def test_precompute_latents_writes_what_the_latent_dataset_and_configs_read(tiny_vae, tmp_path, capsys):
    write_image_folder(tmp_path / "images")
    out = tmp_path / "latents"
    argv = ["precompute-latents", "--root", str(tmp_path / "images"), "--out", str(out), "--resolution", "32"]
    assert main([*argv, "--vae", str(tiny_vae), "--flip", "--batch", "4", "--device", "cpu"]) == 0
    assert "Wrote the latents of 6 image(s)" in capsys.readouterr().out
    dataset = LatentDataset(out)
    assert len(dataset) == 12 and json.loads((out / "meta.json").read_text())["shape"] == [4, 4, 4]
    latent, label = dataset[7]
    assert latent.shape == (4, 4, 4) and latent.dtype == torch.float32 and label == 0  # 7 - 6: cat's 2nd, mirrored
    assert [dataset[k][1] for k in range(6)] == [0, 0, 0, 1, 1, 1]
    cfg = Experiment.load("imagenet256/diffit", [f"data.root={out}"])
    assert len(cfg.build_dataset()) == 12


def test_sampling_a_latent_model_decodes_its_latents_to_images(tiny_vae, tmp_path, capsys):
    overrides = [
        "network.preset=digits16",
        "network.overrides={learn_sigma: true, num_classes: 10, in_channels: 4, resolution: 4, depth: 1}",
        "process.T=50",
        "sample.steps=2",
    ]
    cfg = Experiment.load("imagenet256/diffit", overrides)
    (tmp_path / "run").mkdir()
    torch.save({"model": cfg.build_model().state_dict(), "ema": None, "step": 0}, tmp_path / "run" / "checkpoint.pt")
    (tmp_path / "run" / "config.yaml").write_text(cfg.to_yaml())
    argv = ["sample", "--ckpt", str(tmp_path / "run" / "checkpoint.pt"), "--seeds", "0-1", "--out", str(tmp_path / "s")]
    assert main([*argv, "--class-labels", "3", "--vae", str(tiny_vae), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "s" / "000001.png").size == (32, 32)  # 4x4 latents, decoded 8x


def test_a_missing_vae_names_the_model_and_where_its_files_go(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffbook-tests/no-such-vae") as error:
        load_vae("diffbook-tests/no-such-vae")  # never in the local cache; nothing is downloaded
    assert "huggingface-cli download diffbook-tests/no-such-vae" in str(error.value)
    assert "save_pretrained" in str(error.value) and "--download" in str(error.value)
    assert SD_VAE in vae_missing_message(SD_VAE)
    with pytest.raises(FileNotFoundError, match="precompute-latents"):
        LatentDataset(tmp_path / "nowhere")


# The released checkpoint's layout (NVlabs/DiffiT ``diffit/diffit.py``), rebuilt from its names and shapes


def swin_index(window: int) -> torch.Tensor:
    pairs = [(a // window, a % window, b // window, b % window) for a in range(window**2) for b in range(window**2)]
    index = [(ya - yb + window - 1) * (2 * window - 1) + (xa - xb + window - 1) for ya, xa, yb, xb in pairs]
    return torch.tensor(index).reshape(window**2, window**2)


def assert_time_mlp_reads_cos_sin(net, released: dict[str, torch.Tensor]) -> None:
    """The release embeds t as [cos, sin]: its first time-MLP layer on those features is ours on [sin, cos]."""
    t = torch.tensor([3.0, 500.0])
    freqs = 10_000 ** -(torch.arange(128) / 128)
    features = torch.cat([(t[:, None] * freqs).cos(), (t[:, None] * freqs).sin()], dim=1)
    expected = features @ released["t_embedder.mlp.0.weight"].T + released["t_embedder.mlp.0.bias"]
    torch.testing.assert_close(net.embed.mlp[0](net.embed.noise(t)), expected, rtol=1e-4, atol=1e-4)


def released_state_dict(config) -> dict[str, torch.Tensor]:
    D, p, g, heads = config.dim, config.patch_size, config.grid, config.num_heads
    state = {
        "x_embedder.proj.weight": torch.randn(D, config.in_channels, p, p),
        "x_embedder.proj.bias": torch.randn(D),
        "t_embedder.mlp.0.weight": torch.randn(D, config.freq_dim),
        "t_embedder.mlp.0.bias": torch.randn(D),
        "t_embedder.mlp.2.weight": torch.randn(D, D),
        "t_embedder.mlp.2.bias": torch.randn(D),
        "y_embedder.embedding_table.weight": torch.randn(config.num_classes + 1, D),
        "pos_embed": sincos_pos_embed_2d(D, g)[None],
        "final_layer.linear.weight": torch.randn(p * p * config.out_channels, D),
        "final_layer.linear.bias": torch.randn(p * p * config.out_channels),
    }
    for i in range(config.depth):
        block = {
            "attn.qkv_temb.weight": torch.randn(3 * D, D),
            "attn.qkv_temb.bias": torch.randn(3 * D),
            "attn.relative_position_bias_table": torch.randn((2 * g - 1) ** 2, heads),
            "attn.relative_position_index": swin_index(g),
            "attn.qkv.weight": torch.randn(3 * D, D),
            "attn.qkv.bias": torch.randn(3 * D),
            "attn.proj.weight": torch.randn(D, D),
            "attn.proj.bias": torch.randn(D),
            "mlp.fc1.weight": torch.randn(4 * D, D),
            "mlp.fc1.bias": torch.randn(4 * D),
            "mlp.fc2.weight": torch.randn(D, 4 * D),
            "mlp.fc2.bias": torch.randn(D),
        }
        state.update({f"blocks.{i}.{name}": value for name, value in block.items()})
    return state


def test_the_released_latent_diffit_weights_load_into_the_package_model(tmp_path):
    from diffbook.nets.convert_diffit import convert_released_state_dict, load_released_diffit

    config = latent_diffit_preset("imagenet256", resolution=8, dim=32, depth=2, num_heads=4, num_classes=10)
    released = released_state_dict(config)
    torch.save(released, tmp_path / "diffit.pt")
    net = load_released_diffit(tmp_path / "diffit.pt", config)  # strict: every parameter is matched
    torch.testing.assert_close(net.blocks[1].attn.time_qkv.weight, released["blocks.1.attn.qkv_temb.weight"])
    assert_time_mlp_reads_cos_sin(net, released)
    with pytest.raises(ValueError, match="unexpected key"):
        convert_released_state_dict({**released, "blocks.0.attn.gate": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="pos_embed has shape .* the weights are for another resolution"):
        convert_released_state_dict(released, latent_diffit_preset("imagenet256", resolution=16, dim=32))


def test_import_diffit_turns_the_released_safetensors_into_a_checkpoint_of_the_same_network(tmp_path, capsys):
    from safetensors.torch import save_file

    from diffbook.experiments import run_config
    from diffbook.nets.convert_diffit import load_released_diffit

    sizes = "{resolution: 8, dim: 32, depth: 2, num_heads: 4, num_classes: 10, learn_sigma: true}"
    overrides = [f"network.overrides={sizes}"]
    config = Experiment.load("imagenet256/diffit", overrides).network.config()
    weights, out = tmp_path / "diffit_256.safetensors", tmp_path / "release" / "checkpoint.pt"
    save_file({key: value.contiguous() for key, value in released_state_dict(config).items()}, weights)
    assert main(["import", "diffit", str(weights), *overrides, "--out", str(out)]) == 0
    assert "are licensed NVIDIA Source Code License-NC: non-commercial use only" in capsys.readouterr().err
    assert torch.load(out, weights_only=True)["licence"] == "NVIDIA Source Code License-NC (NVlabs/DiffiT)"
    experiment = run_config(out)  # the checkpoint carries its config: sample --ckpt needs nothing else
    assert experiment.config["sample"]["cfg_channels"] == 3
    imported, direct = experiment.load_checkpoint(out).net.eval(), load_released_diffit(weights, config).eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([3, 10])
    with torch.no_grad():
        torch.testing.assert_close(imported(x, t, y), direct(x, t, y), rtol=0, atol=0)
