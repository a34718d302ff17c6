"""Raw networks: shapes, published parameter counts, conditioning, initialisation, gradients, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from diffbook.nets import (
    UNET_PRESETS,
    ConditionEmbedding,
    FourierEmbedding,
    SinusoidalEmbedding,
    TimeMLP,
    UNet,
    UNetConfig,
    unet_preset,
)
from diffbook.nets.unet import ResBlock, SelfAttention

SMALL_PRESETS = ("digits16", "digits32")
DDPMPP_STYLE = dict(resample="resblock", decoder_attn="last", skip_scale=math.sqrt(0.5))

# The papers' counts: DDPM reports 35.7M, EDM's DDPM++ 55.7M (CIFAR-10) and 61.8M (64x64). EDM's networks also
# hold a 9 -> 128 augmentation-label map (1,152 weights) that this package does not have.
PUBLISHED_MILLIONS = {
    "ddpm_cifar10": (35.5, 36.0),
    "ddpmpp_cifar10": (55.5, 56.5),
    "ddpmpp_ffhq64": (61.5, 62.1),
}


def num_parameters(config: UNetConfig) -> int:
    with torch.device("meta"):  # counts without allocating a single weight
        return sum(p.numel() for p in UNet(config).parameters())


def image_batch(config: UNetConfig, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, config.in_channels, config.resolution, config.resolution)


# Embeddings


def test_sinusoidal_embedding_spans_max_period_and_separates_fractional_labels():
    emb = SinusoidalEmbedding(16, max_period=10_000)
    assert emb.freqs[0] == 1 and math.isclose(emb.freqs[-1].item(), 1e-4, rel_tol=1e-5)
    out = emb(torch.tensor([0.0, 0.25, 0.5]))
    assert out.shape == (3, 16)
    assert torch.equal(out[0], torch.cat([torch.zeros(8), torch.ones(8)]))  # sin 0, cos 0
    assert not torch.allclose(out[1], out[2])


def test_fourier_frequencies_are_saved_and_fixed_by_the_seed():
    torch.manual_seed(0)
    a = FourierEmbedding(32)
    torch.manual_seed(0)
    b = FourierEmbedding(32)
    assert "freqs" in a.state_dict() and not list(a.parameters())
    t = torch.randn(4)
    assert torch.equal(a(t), b(t)) and a(t).shape == (4, 32)


def test_condition_embedding_uses_the_null_class_when_labels_are_none():
    embed = ConditionEmbedding(16, 32, num_classes=10)
    t = torch.rand(3)
    assert torch.equal(embed(t), embed(t, torch.full((3,), 10)))
    assert not torch.allclose(embed(t), embed(t, torch.zeros(3, dtype=torch.long)))
    with pytest.raises(ValueError, match="num_classes=0"):
        ConditionEmbedding(16, 32)(t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="embedding must be one of"):
        ConditionEmbedding(16, 32, embedding="learned")


# TimeMLP


def test_time_mlp_default_widths_are_iso_diffusions():
    net = TimeMLP()
    widths = [net.layers[0].in_features] + [layer.out_features for layer in net.layers]
    assert widths + [net.out.out_features] == [2, 128, 128, 128, 2]


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_time_mlp_output_depends_on_the_noise_label(embedding):
    torch.manual_seed(0)
    net = TimeMLP(embedding=embedding)
    x = torch.randn(8, 2)
    out = net(x, torch.full((8,), 10.0))
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, torch.full((8,), 500.0)))


def test_time_mlp_class_conditional():
    net = TimeMLP(num_classes=3)
    x, t = torch.randn(4, 2), torch.rand(4)
    labels = torch.tensor([0, 1, 2, 3])  # 3 is the null class
    assert net(x, t, labels).shape == x.shape
    assert torch.equal(net(x, t), net(x, t, torch.full((4,), 3)))


# U-Net


@pytest.mark.parametrize("name", list(PUBLISHED_MILLIONS))
def test_paper_presets_match_published_parameter_counts(name):
    low, high = PUBLISHED_MILLIONS[name]
    assert low * 1e6 <= num_parameters(unet_preset(name)) <= high * 1e6


@pytest.mark.parametrize("name", list(UNET_PRESETS))
def test_every_preset_maps_images_to_images(name):
    config = unet_preset(name)
    device = "cpu" if name in SMALL_PRESETS else "meta"  # the paper presets: shapes only
    with torch.device(device):
        net = UNet(config)
        x = image_batch(config)
        assert net(x, torch.rand(2)).shape == (2, config.out_channels, config.resolution, config.resolution)


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_class_conditional_unet_treats_none_as_the_null_class(name):
    torch.manual_seed(0)
    config = unet_preset(name, num_classes=10, init_zero=False)
    net = UNet(config).eval()
    x, t = image_batch(config, 3), torch.rand(3)
    assert net.embed.label.num_embeddings == 11
    assert torch.equal(net(x, t), net(x, t, torch.full((3,), 10)))
    assert not torch.allclose(net(x, t), net(x, t, torch.tensor([0, 1, 2])))


@pytest.mark.parametrize(
    ("style", "attending"),
    [({}, ["8x8_block0", "8x8_block1"]), (DDPMPP_STYLE, ["8x8_block1"])],
    ids=["ddpm", "ddpmpp"],
)
def test_ddpm_and_ddpmpp_styles_on_a_small_net(style, attending):
    config = unet_preset("digits32", channels_per_head=8, **style)
    net = UNet(config)
    assert net(image_batch(config), torch.rand(2)).shape == (2, 1, 32, 32)
    assert [name for name, block in net.dec.items() if getattr(block, "attn", None) is not None] == attending
    assert net.mid[0].attn.num_heads == 4


def test_invalid_configs_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible by 2"):
        UNetConfig(resolution=36, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNetConfig(attn_resolutions=(12,))
    with pytest.raises(ValueError, match="resample"):
        UNetConfig(resample="pixelshuffle")
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        unet_preset("ddpm_imagenet")
    net = UNet(unet_preset("digits16"))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 16, 16\)"):
        net(torch.randn(2, 1, 24, 24), torch.rand(2))


def test_zero_init_starts_every_residual_branch_at_identity_and_the_net_at_zero():
    torch.manual_seed(0)
    net = UNet(unet_preset("digits32", **DDPMPP_STYLE))
    x = image_batch(net.config)
    assert torch.equal(net(x, torch.rand(2)), torch.zeros_like(x))

    s = net.config.skip_scale
    block = net.enc["32x32_block0"]  # 16 -> 16 channels, no resampling: the skip path is the identity
    h, emb = torch.randn(2, 16, 32, 32), torch.randn(2, 64)
    assert isinstance(block.res, ResBlock) and torch.equal(block.res(h, emb), h * s)
    attn = net.mid[0].attn
    assert isinstance(attn, SelfAttention)
    h = torch.randn(2, 32, 8, 8)
    assert torch.equal(attn(h), h * s)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("digits16", {}),
        ("digits32", {}),
        ("digits32", dict(DDPMPP_STYLE, adaptive_scale=True, embedding="fourier")),
    ],
    ids=["digits16", "digits32", "digits32-ddpmpp-adaptive-fourier"],
)
def test_gradient_reaches_every_parameter(name, overrides):
    torch.manual_seed(0)
    # Without init_zero: with it, the zero layers block the gradient to everything before them (see below).
    config = unet_preset(name, num_classes=4, init_zero=False, **overrides)
    net = UNet(config)
    x = image_batch(config, 4)
    net(x, torch.rand(4), torch.tensor([0, 1, 2, 4])).square().mean().backward()
    silent = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_default_init_reaches_every_parameter_by_the_third_step():
    # Step 1 moves only the output conv, step 2 the zero layers ending each branch, step 3 everything.
    torch.manual_seed(0)
    net = UNet(unet_preset("digits16"))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = image_batch(net.config, 4)
    for _ in range(3):
        opt.zero_grad()
        (net(x, torch.rand(4)) - x).square().mean().backward()
        opt.step()
    assert all(p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_same_seed_same_network_and_output(embedding):
    def build_and_run() -> tuple[dict, torch.Tensor]:
        torch.manual_seed(123)
        net = UNet(unet_preset("digits16", embedding=embedding, init_zero=False)).eval()
        x = image_batch(net.config)
        return net.state_dict(), net(x, torch.rand(2))

    (state_a, out_a), (state_b, out_b) = build_and_run(), build_and_run()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(out_a, out_b)


def test_time_mlp_embeds_a_shared_noise_level_once_with_the_same_result():
    torch.manual_seed(0)
    net = TimeMLP()
    x = torch.randn(6, 2)
    shared = net(x, torch.full((6,), 7.0))
    one_by_one = torch.cat([net(x[i : i + 1], torch.tensor([7.0])) for i in range(6)])
    torch.testing.assert_close(shared, one_by_one)
    mixed = torch.tensor([7.0, 3.0, 7.0, 3.0, 1.0, 7.0])
    torch.testing.assert_close(net(x, mixed), torch.cat([net(x[i : i + 1], mixed[i : i + 1]) for i in range(6)]))


def released_dit_state_dict(config) -> dict[str, torch.Tensor]:
    """Random weights under the names and shapes of facebookresearch/DiT's checkpoints, for ``config``."""
    from diffbook.nets.transformer import sincos_pos_embed_2d

    D, p, out = config.dim, config.patch_size, config.patch_size**2 * config.out_channels
    shapes = {
        "x_embedder.proj.weight": (D, config.in_channels, p, p),
        "t_embedder.mlp.0.weight": (D, config.freq_dim),
        "t_embedder.mlp.2.weight": (D, D),
        "y_embedder.embedding_table.weight": (config.num_classes + 1, D),
        "final_layer.adaLN_modulation.1.weight": (2 * D, D),
        "final_layer.linear.weight": (out, D),
    }
    for i in range(config.depth):
        shapes |= {
            f"blocks.{i}.attn.qkv.weight": (3 * D, D),
            f"blocks.{i}.attn.proj.weight": (D, D),
            f"blocks.{i}.mlp.fc1.weight": (4 * D, D),
            f"blocks.{i}.mlp.fc2.weight": (D, 4 * D),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * D, D),
        }
    biases = {k.replace("weight", "bias"): (shape[0],) for k, shape in shapes.items() if "embedding" not in k}
    generator = torch.Generator().manual_seed(0)
    released = {k: torch.randn(shape, generator=generator) for k, shape in (shapes | biases).items()}
    released["pos_embed"] = sincos_pos_embed_2d(D, config.grid)[None]
    return released


def to_diffusers_dit(released: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The release's state dict as diffusers' ``DiTTransformer2DModel`` names it, mapped as diffusers' own
    ``scripts/convert_dit_to_diffusers.py`` maps it: q, k, v split, and the time and class embedders, which
    diffusers keeps in every block's adaLN-Zero, copied into each block."""
    renamed = {
        "x_embedder.proj": "pos_embed.proj",
        "final_layer.adaLN_modulation.1": "proj_out_1",
        "final_layer.linear": "proj_out_2",
    }
    per_block = {
        "adaLN_modulation.1": "norm1.linear",
        "attn.proj": "attn1.to_out.0",
        "mlp.fc1": "ff.net.0.proj",
        "mlp.fc2": "ff.net.2",
    }
    embedders = {
        "t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
        "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
        "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table",
    }
    state = {}
    for key, value in released.items():
        if key == "pos_embed":
            continue  # not a parameter in diffusers, which computes the same fixed sin-cos table
        module, name = key.rsplit(".", 1)
        if module in renamed:
            state[f"{renamed[module]}.{name}"] = value
        elif module in embedders:
            state |= {f"transformer_blocks.{i}.{embedders[module]}.{name}": value for i in range(depth)}
        elif module.startswith("blocks.") and module.endswith("attn.qkv"):
            block = module.split(".")[1]
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                state[f"transformer_blocks.{block}.attn1.to_{part}.{name}"] = chunk
        elif module.startswith("blocks."):
            _, block, rest = module.split(".", 2)
            state[f"transformer_blocks.{block}.{per_block[rest]}.{name}"] = value
    return state


def test_the_released_dit_weights_compute_what_diffusers_dit_computes_with_them(tmp_path):
    from benchmarks.perf.peers import diffusers_dit
    from diffbook.nets.convert_dit import load_released_dit
    from diffbook.nets.dit import dit_preset

    config = dit_preset("S/2", num_classes=10, resolution=8, depth=2, dim=32, num_heads=4)
    released = released_dit_state_dict(config)
    torch.save(released, tmp_path / "dit.pt")
    ours = load_released_dit(tmp_path / "dit.pt", config).eval()
    theirs = diffusers_dit(config).eval()  # DiTTransformer2DModel of the same sizes, called as a package network
    theirs.model.load_state_dict(to_diffusers_dit(released, config.depth))  # strict, as diffusers' script loads
    # diffusers spaces the time frequencies by 1/(half - 1) (downscale_freq_shift=1), DiT and ours by 1/half:
    # the one place the two ports differ; set it to DiT's so that the comparison sees everything else.
    for block in theirs.model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, config.in_channels, config.resolution, config.resolution, generator=generator)
    t, y = torch.tensor([0.0, 250.0, 999.0]), torch.tensor([0, 4, 10])  # 10: the null class of guidance
    with torch.no_grad():
        expected = theirs(x, t, y)
        # Unit-scale random weights give outputs in the thousands; float32 rounding is relative to that scale.
        torch.testing.assert_close(ours(x, t, y), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_the_released_dit_weights_become_a_checkpoint_to_fine_tune_from(tmp_path, capsys):
    from test_diffit import assert_time_mlp_reads_cos_sin

    from diffbook.cli import main
    from diffbook.experiments import Experiment
    from diffbook.nets.convert_dit import convert_released_dit
    from diffbook.nets.dit import dit_preset

    sizes = "{num_classes: 10, resolution: 8, depth: 2, dim: 32, num_heads: 4}"
    overrides = ["network.preset=S/2", f"network.overrides={sizes}"]
    config = dit_preset("S/2", num_classes=10, resolution=8, depth=2, dim=32, num_heads=4)
    D = config.dim
    released = released_dit_state_dict(config)
    torch.save(released, tmp_path / "dit.pt")

    assert main(["import", "dit", str(tmp_path / "dit.pt"), *overrides, "--out", str(tmp_path / "checkpoint.pt")]) == 0
    assert "are licensed CC BY-NC 4.0: non-commercial use only" in capsys.readouterr().err
    experiment = Experiment.load("imagenet256/sadm", [*overrides, f"network.init_from={tmp_path / 'checkpoint.pt'}"])
    assert experiment.licence == "CC BY-NC 4.0 (facebookresearch/DiT)" == experiment.record()["licence"]
    net = experiment.initial_model().net  # strict: every parameter is matched
    torch.testing.assert_close(net.blocks[1].modulation[1].weight, released["blocks.1.adaLN_modulation.1.weight"])
    assert_time_mlp_reads_cos_sin(net, released)
    with pytest.raises(ValueError, match="unexpected key"):
        convert_released_dit({**released, "blocks.0.norm1.weight": torch.ones(D)}, config)
    with pytest.raises(ValueError, match=r"pos_embed has shape \(1, 16, 32\), this config's \(1, 64, 32\)"):
        convert_released_dit(released, dit_preset("S/2", num_classes=10, resolution=16, depth=2, dim=32, num_heads=4))


def test_self_attention_is_softmax_attention_over_positions_in_every_head():
    torch.manual_seed(0)
    B, C, H, W, heads = 2, 8, 3, 4, 2
    attn = SelfAttention(C, num_heads=heads)
    torch.nn.init.normal_(attn.proj.weight)  # not the zero of init_zero, so that the branch shows
    x = torch.randn(B, C, H, W)
    qkv = attn.qkv(attn.norm(x)).flatten(2)  # (B, 3C, HW): channels q | k | v, each heads x C/heads
    q, k, v = (t.reshape(B, heads, C // heads, H * W) for t in qkv.chunk(3, dim=1))
    weights = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(C // heads), dim=-1)
    out = torch.einsum("bhij,bhdj->bhdi", weights, v).reshape(B, C, H, W)
    expected = x + attn.proj(out)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["digits32", "ddpm_cifar10"])
def test_unet_runs_channels_last_and_computes_what_the_default_layout_computes(name, monkeypatch):
    torch.manual_seed(0)
    config = unet_preset(name, init_zero=False)
    net = UNet(config).eval()
    x, t = image_batch(config), torch.rand(2)
    with torch.no_grad():
        out = net(x, t)
        assert out.is_contiguous() and net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        monkeypatch.setattr("diffbook.nets.unet.channels_last", lambda x: x)
        plain = net.to(memory_format=torch.contiguous_format)
        assert plain.conv_in.weight.is_contiguous()
        torch.testing.assert_close(out, plain(x, t), atol=1e-4, rtol=1e-4)
