"""Explorers: the states they show against closed forms, the static figure, and the widget's wiring."""

import base64
import math

import matplotlib.pyplot as plt
import pytest
import torch

from diffbook.booktools.attention import (
    attention_explorer,
    attention_inputs,
    attention_layers,
    attention_state,
    attention_summary,
)
from diffbook.booktools.explorer import Control, Explorer, figure_png
from diffbook.booktools.explorers import (
    SAMPLER_LABELS,
    forward_explorer,
    forward_states,
    jump_explorer,
    jump_state,
    sampler_at_nfe,
    sampler_explorer,
    sweep_explorer,
    sweep_points,
)
from diffbook.data import gaussian
from diffbook.diffusion import DDPM, EDM, Denoiser
from diffbook.experiments.sweep import parse_grid, run_sweep
from diffbook.nets.diffit import DiffiTUNet, diffit_unet_preset
from diffbook.nets.tmsa import WindowAttention
from diffbook.samplers import sample_seeds

PROCESS = DDPM(T=1000, schedule="linear")
MEAN, STD = torch.tensor([1.0, -0.5]), 0.5


def counting_explorer(calls: list) -> Explorer:
    def compute(a: int, b: str) -> tuple[int, str]:
        calls.append((a, b))
        return a, b

    def draw(axes, state) -> None:
        axes[0].set_title(f"{state}")

    return Explorer("test", [Control("a", (1, 2, 3)), Control("b", ("x", "y"))], compute, draw, static=("a", "b"))


def gaussian_flow(x: torch.Tensor, t: float, u: float) -> torch.Tensor:
    """The exact PF-ODE map of N(MEAN, STD^2 I) data from level t to level u."""
    return MEAN + ((STD**2 + u**2) / (STD**2 + t**2)) ** 0.5 * (x - MEAN)


def test_states_are_computed_once_and_values_are_checked():
    calls = []
    explorer = counting_explorer(calls)
    assert explorer.state() == (1, "x") and explorer.state(a=1) == (1, "x") and calls == [(1, "x")]
    assert explorer.state(b="y", a=3) == (3, "y")
    with pytest.raises(ValueError, match="choose one of"):
        explorer.state(a=4)
    with pytest.raises(ValueError, match="not a control"):
        explorer.state(c=1)
    with pytest.raises(ValueError, match="offers no values"):
        Control("empty", ())


def test_static_figure_is_the_grid_of_the_two_static_controls():
    calls = []
    fig = counting_explorer(calls).static_figure()
    assert len(fig.axes) == 3 * 2
    assert [ax.get_title() for ax in fig.axes] == [str((a, b)) for b in "xy" for a in (1, 2, 3)]
    plt.close(fig)
    assert sorted(calls) == sorted((a, b) for a in (1, 2, 3) for b in "xy")


def test_widget_redraws_the_picture_when_a_control_moves():
    explorer = counting_explorer([])
    widget = explorer.widget()
    header, controls, image = widget.children
    slider, menu = controls.children
    assert image.value == figure_png(explorer.figure())
    slider.value = 3
    menu.value = "y"
    assert image.value == figure_png(explorer.figure(a=3, b="y")) != figure_png(explorer.figure())
    assert type(slider).__name__ == "SelectionSlider" and type(menu).__name__ == "Dropdown"


def test_display_carries_the_widget_and_the_static_figure():
    bundle = counting_explorer([])._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")


def test_forward_states_follow_the_closed_form_with_one_noise_draw():
    x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)) * 0.3 + 2
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
    for t in (0, 300, 999):
        alpha_bar = PROCESS.alpha_bar[t].float()
        expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
        torch.testing.assert_close(forward_states(x0, PROCESS, t, seed=7), expected)
    last = forward_states(x0, PROCESS, 999)
    assert last.mean().abs() < 0.05 and (last.std() - 1).abs() < 0.05
    explorer = forward_explorer(torch.zeros(8, 1, 4, 4), PROCESS, steps=(0, 999))
    assert explorer.state(t=999)[1].shape == (8, 1, 4, 4)
    plt.close(explorer.static_figure())


@pytest.mark.parametrize("sampler", SAMPLER_LABELS)
def test_every_sampler_turns_noise_into_the_gaussian_at_its_nfe(sampler):
    """The exact denoiser of N(MEAN, STD^2 I): every sampler, routed at its NFE, must return that distribution
    (199 evaluations: where each one's discretisation error is below the tolerance, as in test_samplers)."""
    denoiser = gaussian(mean=tuple(MEAN.tolist()), std=STD).denoiser
    out = sample_seeds(denoiser, sampler_at_nfe(sampler, nfe=199), range(20_000), (2,), process=PROCESS)
    assert out.nfe == 199
    assert (out.samples.mean(0) - MEAN).abs().max() < 0.03
    assert (out.samples.std(0) / STD - 1).abs().max() < 0.03
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_at_nfe("RK4", nfe=5)


def test_churn_moves_only_the_edm_samplers_and_is_seeded():
    denoiser = gaussian(mean=tuple(MEAN.tolist()), std=STD).denoiser
    explorer = sampler_explorer(denoiser, PROCESS, 64, nfe=(9,), churn=(0.0, 40.0))
    for sampler in SAMPLER_LABELS:
        still, churned = (explorer.state(sampler=sampler, churn=c).samples for c in (0.0, 40.0))
        assert torch.equal(still, churned) == sampler.startswith("DD")
    heun = sampler_at_nfe("EDM Heun", 9, churn=40.0)
    again = sample_seeds(denoiser, heun, range(64), (2,), return_trajectory=True, process=PROCESS)
    torch.testing.assert_close(again.samples, explorer.state(sampler="EDM Heun", churn=40.0).samples)
    assert len(again.trajectory) == again.nfe // 2 + 2  # one state per step, and the end
    plt.close(explorer.static_figure())


def test_jumps_of_the_exact_flow_map_have_no_error_and_invert_each_other():
    x0 = MEAN + STD * torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    down = jump_state(x0, gaussian_flow, 10.0, 0.5, exact=gaussian_flow, seed=3)
    assert down.rms_error == 0.0
    up = jump_state(x0, gaussian_flow, 0.5, 10.0, seed=3)
    torch.testing.assert_close(gaussian_flow(up.jumped, 10.0, 0.5), up.x_t)
    assert up.rms_error is None
    point_mass = jump_state(torch.zeros(5, 2), lambda x, t, u: u / t * x, 4.0, 1.0)
    torch.testing.assert_close(point_mass.jumped, point_mass.x_t / 4)
    explorer = jump_explorer(x0, gaussian_flow, gaussian_flow, starts=(10.0, 0.5), targets=(0.002, 80.0))
    assert explorer.state(t=0.5, u=80.0).rms_error == 0.0
    plt.close(explorer.static_figure())


def test_sweep_explorer_shows_each_points_first_seed_and_mean_metrics(tmp_path):
    tiny = ["train.steps=20", "sample.steps=10", "train.batch_size=32"]
    records = run_sweep(
        "toy/iso", parse_grid(["objective.weight=0.3,0"]), [0, 1], tmp_path, tiny, num_samples=200, progress=False
    )
    points = sweep_points(tmp_path)
    assert [point.value for point in points] == [0.0, 0.3]
    for point in points:
        runs = [r for r in records if r["overrides"] == [f"objective.weight={point.value:g}"]]
        assert point.metrics["precision"] == pytest.approx(sum(r["metrics"]["precision"] for r in runs) / 2)
        first = next(r for r in runs if r["seed"] == 0)
        assert torch.equal(point.samples, torch.load(tmp_path / first["run"] / "samples.pt"))
    with pytest.raises(ValueError, match="no grid point"):
        sweep_points(tmp_path, where="data.name=missing")
    fig = sweep_explorer(tmp_path).static_figure()
    assert len(fig.axes) == 2 * 2
    plt.close(fig)


def blank_attention_denoiser(**overrides) -> Denoiser:
    """A digits DiffiT whose attention layers have all-zero projections and bias: every logit is 0."""
    net = DiffiTUNet(diffit_unet_preset("digits16", **overrides))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, WindowAttention):
                for parameter in module.parameters():
                    parameter.zero_()
    return Denoiser(net, EDM())


def test_attention_maps_sit_in_the_query_window_and_sum_to_one():
    """Zero logits make attention uniform over the query's window: 1/16 on its 4x4 block, 0 elsewhere."""
    x0 = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    denoiser = blank_attention_denoiser()
    assert attention_layers(denoiser.net)[0] == "encoder.0.0.block.attn"
    fine = attention_state(denoiser, x0, 1.0, "encoder.0.0.block.attn", query=(5, 9))
    expected = torch.zeros(2, 16, 16)
    expected[:, 4:8, 8:12] = 1 / 16
    torch.testing.assert_close(fine.maps, expected)
    torch.testing.assert_close(fine.entropy, torch.full((2,), math.log(16)))
    coarse = attention_state(denoiser, x0, 1.0, "bottleneck.0.block.attn", query=(5, 9))  # the 8x8 grid
    assert coarse.query == (2, 4) and coarse.maps.shape == (6, 8, 8)
    assert torch.all(coarse.maps[:, 0:4, 4:8] == 1 / 16) and coarse.maps.sum() == pytest.approx(6)
    torch.testing.assert_close(fine.noisy, x0[0] + torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))[0])


def test_a_separate_time_token_takes_its_share_of_the_attention():
    x0 = torch.zeros(1, 1, 16, 16)
    state = attention_state(blank_attention_denoiser(time_mode="token"), x0, 10.0, "encoder.0.0.block.attn", (0, 0))
    torch.testing.assert_close(state.time_weight, torch.full((2,), 1 / 17))
    torch.testing.assert_close(state.maps.sum((1, 2)) + state.time_weight, torch.ones(2))


def test_caught_attention_inputs_replay_the_layer_and_carry_the_noise_level():
    torch.manual_seed(0)
    denoiser = Denoiser(DiffiTUNet(diffit_unet_preset("digits8")), EDM())
    layer = "bottleneck.1.block.attn"
    attention = denoiser.net.get_submodule(layer)
    outputs = []
    handle = attention.register_forward_hook(lambda module, args, output: outputs.append(output))
    noisy = torch.randn(3, 1, 8, 8)
    tokens, time_token = attention_inputs(denoiser, noisy, 2.0, layer)
    handle.remove()
    assert tokens.shape == (3, 4, 4, 96) and time_token.shape == (3, 128)
    torch.testing.assert_close(attention(tokens, time_token), outputs[0])  # the layer's own output, replayed
    _, other_time = attention_inputs(denoiser, noisy, 0.5, layer)
    assert torch.equal(time_token[0], time_token[2]) and not torch.allclose(time_token, other_time)


def test_attention_summary_of_uniform_attention_and_of_a_known_time_query():
    noisy = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    layer = "encoder.0.0.block.attn"
    blank = blank_attention_denoiser()
    assert attention_summary(blank, noisy, 1.0, layer)[0] == pytest.approx(math.log(16))  # zero logits: uniform
    attention = blank.net.get_submodule(layer)
    with torch.no_grad():  # spatial queries of norm 2 at every token, a time query of norm 1
        attention.qkv.bias[:2] = torch.tensor([2.0, 0.0])
        attention.time_qkv.bias[:2] = torch.tensor([0.0, 1.0])
    assert attention_summary(blank, noisy, 1.0, layer)[1] == pytest.approx(0.5)
    assert math.isnan(attention_summary(blank_attention_denoiser(time_mode="adaln"), noisy, 1.0, layer)[1])


def test_attention_explorer_draws_every_noise_level():
    denoiser = Denoiser(DiffiTUNet(diffit_unet_preset("digits16")), EDM())
    explorer = attention_explorer(denoiser, torch.zeros(1, 1, 16, 16), sigmas=(10.0, 0.1))
    fig = explorer.static_figure()
    assert len(fig.axes) == 2 * 2
    plt.close(fig)
    assert not torch.equal(explorer.state(sigma=10.0).maps, explorer.state(sigma=0.1).maps)
