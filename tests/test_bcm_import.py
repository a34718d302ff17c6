"""The BCM release: ADM's U-Net in the authors' layout, ``python -m diffbook import bcm``, and the two-time
embedding's order (the class after the t/u merge, as in the authors' network)."""

from __future__ import annotations

import math

import pytest
import torch

from diffbook.cli import main
from diffbook.experiments import Experiment
from diffbook.nets import TwoTimeEmbedding, load_single_time_weights
from diffbook.nets.adm_unet import ADMUNet, adm_unet_preset
from diffbook.nets.convert_bcm import check_released_bcm, load_released_bcm

# A network of the release's layout small enough for a test: 16x16, two levels, attention at 8.
TINY = {
    "resolution": 16,
    "model_channels": 32,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "attn_resolutions": (8,),
    "channels_per_head": 32,
    "num_classes": 10,
}
TINY_OVERRIDES = [
    "network.overrides={resolution: 16, model_channels: 32, channel_mult: [1, 2], num_res_blocks: 1, "
    "attn_resolutions: [8], channels_per_head: 32, num_classes: 10}",
    "data.resolution=16",
]


def tiny_config(**overrides):
    return adm_unet_preset("bcm_imagenet64", **(TINY | overrides))


def released_weights(seed: int = 0, **overrides) -> dict[str, torch.Tensor]:
    """A state dict in the release's format: the tiny network's keys, every tensor random (none zero)."""
    generator = torch.Generator().manual_seed(seed)
    net = ADMUNet(tiny_config(**overrides))
    return {key: 0.2 * torch.randn(value.shape, generator=generator) for key, value in net.state_dict().items()}


def inputs(batch: int = 3):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 16, 16, generator=generator)
    labels = torch.tensor([[-500.0, -1500.0], [10.0, 200.0], [900.0, 1000.0]])[:batch]
    return x, labels, torch.tensor([0, 4, 9])[:batch]


def test_the_two_time_embedding_adds_the_class_after_the_merge():
    torch.manual_seed(0)
    embed = TwoTimeEmbedding(8, 16, num_classes=5)
    noise_labels, classes = torch.tensor([[3.0, -2.0], [40.0, 7.0]]), torch.tensor([1, 4])
    # The authors' order, written out: each time through its own MLP, merge, then the class row, then SiLU.
    t, u = embed.noise(noise_labels[:, 0]), embed.noise(noise_labels[:, 1])
    merged = torch.cat([embed.mlp(t), embed.mlp_u(u)], dim=1) @ embed.merge.weight.T
    expected = torch.nn.functional.silu(merged + embed.label.weight[classes])
    torch.testing.assert_close(embed(noise_labels, classes), expected)
    null = torch.nn.functional.silu(merged + embed.label.weight[5])  # no class: the null row, the last
    torch.testing.assert_close(embed(noise_labels), null)
    # After init_from_single_time the embedding is ADM's single-time one: SiLU(MLP_t(t) + class), whatever u.
    embed.init_from_single_time()
    single = torch.nn.functional.silu(embed.mlp(t) + embed.label.weight[classes])
    torch.testing.assert_close(embed(noise_labels, classes), single, rtol=0, atol=0)


def test_the_adm_embedding_is_the_release_s_cos_sin_sinusoid_merged_then_the_class():
    net = ADMUNet(tiny_config())
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.1)
    noise_labels, classes = torch.tensor([[3.0, -2.0], [250.0, 1000.0]]), torch.tensor([2, 7])
    half = 16  # of model_channels = 32: the release's frequencies exp(-ln(10000) i / half), i < half
    freqs = torch.exp(-math.log(10_000) * torch.arange(half) / half)

    def features(labels):
        angles = labels[:, None] * freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1)

    emb_t = net.time_embed(features(noise_labels[:, 0]))
    emb_u = net.time_embed_end(features(noise_labels[:, 1]))
    expected = torch.cat([emb_t, emb_u], dim=1) @ net.time_embed_align.weight.T + net.label_emb.weight[classes]
    # Up to float32 rounding of the angles, which the labels (up to 1000) amplify.
    torch.testing.assert_close(net.embed(noise_labels, classes), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="no null class"):
        net.embed(noise_labels)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net.embed(noise_labels[:, 0], classes)


def test_the_full_size_networks_have_the_release_s_key_names_and_shapes():
    with torch.device("meta"):  # shapes only: BCM's network has 280M parameters, BCM-deep's 467M
        bcm = ADMUNet(adm_unet_preset("bcm_imagenet64")).state_dict()
        deep = ADMUNet(adm_unet_preset("bcm_deep_imagenet64")).state_dict()
    # Read off BCM/cm/unet_bcf.py with the flags of bcf_imagenet64_no32_qkv_4096.sh: C = 192, 768 wide embedding,
    # levels of 192, 384, 576, 768 channels, 3 blocks each, a down ResBlock after each level but the last.
    shapes = {
        "time_embed.0.weight": (768, 192),
        "time_embed.2.weight": (768, 768),
        "time_embed_end.0.weight": (768, 192),
        "time_embed_align.weight": (768, 1536),
        "label_emb.weight": (1000, 768),
        "input_blocks.0.0.weight": (192, 3, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (192, 768),
        "input_blocks.4.0.in_layers.2.weight": (192, 192, 3, 3),  # the first down ResBlock
        "input_blocks.5.0.skip_connection.weight": (384, 192, 1, 1),
        "input_blocks.9.1.qkv.weight": (1728, 576, 1, 1),  # 16x16: attention
        "input_blocks.9.1.proj_out.weight": (576, 576, 1, 1),
        "middle_block.1.qkv.weight": (2304, 768, 1, 1),
        "output_blocks.0.0.in_layers.2.weight": (768, 1536, 3, 3),
        "output_blocks.3.0.in_layers.2.weight": (768, 1344, 3, 3),  # 768 + the 576 of the last down block
        "output_blocks.3.2.in_layers.2.weight": (768, 768, 3, 3),  # the first up ResBlock, after attention
        "out.0.weight": (192,),
        "out.2.weight": (3, 192, 3, 3),
    }
    assert {key: tuple(bcm[key].shape) for key in shapes} == shapes
    assert "time_embed_align.bias" not in bcm and "input_blocks.5.1.qkv.weight" not in bcm  # no attention at 32
    assert (len(bcm), sum(v.numel() for v in bcm.values())) == (504, 279_941_571)
    outputs = {key.split(".")[1] for key in deep if key.startswith("output_blocks.")}
    assert len(outputs) == 4 * 7 and (len(deep), sum(v.numel() for v in deep.values())) == (840, 466_988_355)


def test_import_bcm_gives_a_checkpoint_that_samples_and_computes_the_release_s_network(tmp_path, capsys):
    released = released_weights()
    torch.save(released, tmp_path / "ema_0.99997_234000.pt")
    ckpt = tmp_path / "checkpoint.pt"
    argv = ["import", "bcm", str(tmp_path / "ema_0.99997_234000.pt"), *TINY_OVERRIDES, "--out", str(ckpt)]
    assert main(argv) == 0
    assert "are licensed MIT" in capsys.readouterr().err

    experiment = Experiment.load("imagenet64/bcm", TINY_OVERRIDES)
    model = experiment.load_checkpoint(ckpt).eval()
    independent = ADMUNet(tiny_config()).eval()
    independent.load_state_dict(released)
    x, labels, classes = inputs()
    with torch.no_grad():
        assert torch.equal(model.net(x, labels, classes), independent(x, labels, classes))

    sample = ["sample", "--ckpt", str(ckpt), "--seeds", "0-1", "--class-labels", "3,7", "--out", str(tmp_path / "s")]
    assert main(sample) == 0
    assert sorted(path.name for path in (tmp_path / "s").glob("*.png")) == ["000000.png", "000001.png"]


def test_a_wrong_file_fails_naming_the_key_and_the_cause(tmp_path):
    released, net = released_weights(), ADMUNet(tiny_config())
    missing = {k: v for k, v in released.items() if k != "middle_block.1.qkv.weight"}
    with pytest.raises(ValueError, match=r"missing key 'middle_block\.1\.qkv\.weight'"):
        check_released_bcm(missing, net)
    with pytest.raises(ValueError, match=r"unexpected key 'middle_block\.1\.encoder_kv\.weight'"):
        check_released_bcm(released | {"middle_block.1.encoder_kv.weight": torch.zeros(1)}, net)
    wide = released | {"label_emb.weight": torch.zeros(1000, 128)}
    with pytest.raises(ValueError, match=r"label_emb\.weight has shape \(1000, 128\) in the checkpoint, \(10, 128\)"):
        check_released_bcm(wide, net)
    with pytest.raises(ValueError, match="2 residual blocks per level, this config 1 .*BCM-deep 6"):
        check_released_bcm(released_weights(num_res_blocks=2), net)
    single_time = {k: v for k, v in released.items() if not k.startswith(ADMUNet.u_branch)}
    with pytest.raises(ValueError, match="single-time .iCT. checkpoint; import it with network.overrides.two_times"):
        check_released_bcm(single_time, net)
    with pytest.raises(FileNotFoundError, match=r"none\.pt' not found: download .*figshare\.com/ndownloader/articles/"):
        load_released_bcm(tmp_path / "none.pt", tiny_config())


def test_an_ict_checkpoint_starts_the_two_time_network_as_the_consistency_model():
    ict = ADMUNet(tiny_config(two_times=False)).eval()
    ict.load_state_dict({k: v for k, v in released_weights().items() if not k.startswith(ADMUNet.u_branch)})
    bcm = ADMUNet(tiny_config()).eval()
    load_single_time_weights(bcm, ict.state_dict())
    x, labels, classes = inputs()
    with torch.no_grad():  # the merge [I | 0] ignores u, exactly
        assert torch.equal(bcm(x, labels, classes), ict(x, labels[:, 0], classes))
    with pytest.raises(ValueError, match="already holds a two-time"):
        load_single_time_weights(bcm, bcm.state_dict())


def test_the_config_route_imports_ict_weights_and_fine_tunes_bcm_from_them(tmp_path):
    ict = {k: v for k, v in released_weights().items() if not k.startswith(ADMUNet.u_branch)}
    torch.save(ict, tmp_path / "ict.pt")
    single_time = [*TINY_OVERRIDES, "network.overrides.two_times=false"]
    out = ["--out", str(tmp_path / "ict" / "checkpoint.pt")]
    assert main(["import", "bcm", str(tmp_path / "ict.pt"), *single_time, *out]) == 0
    init_from = f"network.init_from={tmp_path / 'ict' / 'checkpoint.pt'}"
    model = Experiment.load("imagenet64/bcm", [*TINY_OVERRIDES, init_from]).initial_model().eval()
    consistency = Experiment.load("imagenet64/bcm", single_time).load_checkpoint(tmp_path / "ict" / "checkpoint.pt")
    x, classes = inputs()[0], inputs()[2]
    t = torch.tensor([80.0, 2.4, 0.1])
    with torch.no_grad():  # the jump to sigma_min of the two-time model is the consistency model's, exactly
        assert torch.equal(model(x, t, 0.002, classes), consistency.eval()(x, t, 0.002, classes))


def test_cosine_attention_normalises_q_k_v_per_head_then_takes_softmax_attention():
    from diffbook.nets.adm_unet import AttentionBlock

    torch.manual_seed(0)
    B, C, H, W, d = 2, 64, 3, 4, 32
    attn = AttentionBlock(C, channels_per_head=d, cosine=True)
    torch.nn.init.normal_(attn.proj_out.weight)  # not ADM's zero init, so that the branch shows
    x = torch.randn(B, C, H, W)
    qkv = attn.qkv(attn.norm(x)).reshape(B, 3 * C, H * W)  # channels q | k | v, each heads x d
    q, k, v = (t.reshape(B, C // d, d, H * W) for t in qkv.chunk(3, dim=1))
    q, k, v = (t / (1e-4 + t.norm(dim=2, keepdim=True) / math.sqrt(d)) for t in (q, k, v))  # norm sqrt(d)
    weights = torch.softmax(torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(d), dim=-1)
    out = torch.einsum("bhij,bhcj->bhci", weights, v).reshape(B, C, H, W)
    torch.testing.assert_close(attn(x), x + attn.proj_out(out), atol=1e-5, rtol=1e-5)


def test_an_imported_bcm_release_as_init_from_loads_as_it_is(tmp_path):
    torch.save(released_weights(), tmp_path / "bcm.pt")
    ckpt = tmp_path / "bcm" / "checkpoint.pt"
    assert main(["import", "bcm", str(tmp_path / "bcm.pt"), *TINY_OVERRIDES, "--out", str(ckpt)]) == 0
    model = Experiment.load("imagenet64/bcm", [*TINY_OVERRIDES, f"network.init_from={ckpt}"]).initial_model()
    released = Experiment.load("imagenet64/bcm", TINY_OVERRIDES).load_checkpoint(ckpt)
    for (key, ours), theirs in zip(model.state_dict().items(), released.state_dict().values(), strict=True):
        assert torch.equal(ours, theirs), key  # the u-branch too: loaded, not reset to [I | 0]
