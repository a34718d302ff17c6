"""The benchmarks' instruments and peers: measurements against known answers, and peers that do the same work."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks.perf import Timing, count_flops, peak_memory_of, time_in_turns
from benchmarks.perf.peers import (
    diffusers_dit,
    diffusers_scheduler,
    diffusers_unet,
    dit_embedder_parameters,
    run_scheduler,
    unet_differences,
)
from benchmarks.perf.suite import (
    SCALES,
    SECTIONS,
    Row,
    Settings,
    compare_training,
    diffit_rows,
    forward_gflops,
    latent_diffit_like,
    run,
    training_gflops,
)
from benchmarks.perf.timing import time_training_steps
from diffbook.diffusion import DDPM, EDM, Denoiser, karras_sigmas
from diffbook.nets import UNet, unet_preset
from diffbook.nets.dit import DiT, dit_preset
from diffbook.nets.latent_diffit import LatentDiffiT
from diffbook.samplers import ddim_sample, edm_sample

CPU = torch.device("cpu")


def _parameters(build) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


# Instruments


def test_timing_reports_the_median_and_half_the_interquartile_range():
    timing = Timing((1.0, 5.0, 2.0, 4.0, 3.0))
    assert timing.median == 3.0
    # Quartiles of 1..5 (exclusive method): 1.5 and 4.5.
    assert timing.spread == pytest.approx((4.5 - 1.5) / 2 / 3.0)


def test_candidates_are_timed_in_turns_after_the_warm_up():
    calls = []
    timings = time_in_turns({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, CPU, warmup=2, rounds=3)
    assert calls == ["a", "b"] * 2 + ["a", "b", "b", "a", "a", "b"]
    assert {name: len(t.seconds) for name, t in timings.items()} == {"a": 3, "b": 3}
    with pytest.raises(ValueError, match="at least one timed round"):
        time_in_turns({"a": lambda: None}, CPU, rounds=0)


def test_flop_count_of_a_linear_layer_is_two_multiply_adds_per_weight_and_example():
    layer = nn.Linear(10, 20)
    assert count_flops(lambda: layer(torch.randn(3, 10))) == 2 * 3 * 10 * 20


def test_peak_memory_sees_a_temporary_of_known_size():
    mib = 64
    peak = peak_memory_of(lambda: torch.ones(mib * 2**20 // 4).sum(), CPU)  # float32: 4 bytes an element
    assert mib * 0.9 < peak < mib * 1.5


# Peers: the same networks


def test_diffusers_unet_is_ddpms_cifar10_network_to_the_parameter():
    config = unet_preset("ddpm_cifar10")
    assert unet_differences(config) == []
    assert _parameters(lambda: UNet(config)) == _parameters(lambda: diffusers_unet(config)) == 35_746_307
    shape = (config.in_channels, config.resolution, config.resolution)
    ours, peer = (forward_gflops(build, shape, 0) for build in (lambda: UNet(config), lambda: diffusers_unet(config)))
    assert ours == pytest.approx(peer, rel=1e-3)


def test_diffusers_unet_names_what_it_cannot_build_of_ddpmpp():
    config = unet_preset("ddpmpp_cifar10")
    differences = unet_differences(config)
    assert any("every decoder block" in d for d in differences)
    assert any("residual scale" in d for d in differences)
    ours, peer = _parameters(lambda: UNet(config)), _parameters(lambda: diffusers_unet(config))
    assert ours != peer and abs(peer / ours - 1) < 0.05


def test_diffusers_dit_differs_only_by_an_embedder_in_every_block_but_one():
    config = dit_preset("S/2", depth=3)
    extra = _parameters(lambda: diffusers_dit(config)) - _parameters(lambda: DiT(config))
    assert extra == (config.depth - 1) * dit_embedder_parameters(config)
    with pytest.raises(ValueError, match="class-conditional"):
        diffusers_dit(dit_preset("digits16"))


def test_diffusers_networks_run_through_the_package_interface():
    config = unet_preset("digits16")
    out = diffusers_unet(config)(torch.randn(2, 1, 16, 16), torch.tensor([3.0, 500.0]))
    assert out.shape == (2, 1, 16, 16)
    dit = dit_preset("digits16", num_classes=10)
    out = diffusers_dit(dit)(torch.randn(2, 1, 16, 16), torch.tensor([3.0, 500.0]), torch.tensor([1, 9]))
    assert out.shape == (2, 1, 16, 16)


# Peers: the same sampling


STD = 0.5  # the data: N(0, STD^2) in every pixel


class GaussianEpsNet(nn.Module):
    """The exact noise prediction of DDPM for N(0, STD^2) data, from the step label ``t``: ``eps_hat =
    sqrt(1 - ab) x_t / (ab STD^2 + 1 - ab)``. A fractional ``t`` (the package's) is rounded to the grid."""

    def __init__(self, process: DDPM) -> None:
        super().__init__()
        self.alpha_bar = process.alpha_bar

    def forward(self, x, t, class_labels=None):
        ab = self.alpha_bar[torch.as_tensor(t).round().long().cpu()].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return (1 - ab).sqrt() * x / (ab * STD**2 + 1 - ab)


class GaussianEDMNet(nn.Module):
    """The raw network ``F`` that EDM's preconditioning turns into the exact denoiser of N(0, STD^2) data."""

    def __init__(self, process: EDM) -> None:
        super().__init__()
        self.process = process

    def forward(self, x_in, c_noise, class_labels=None):
        sigma = (4 * torch.as_tensor(c_noise, dtype=torch.float64)).exp().reshape(-1, *[1] * (x_in.ndim - 1))
        c_skip, c_out, c_in, _ = self.process.scalings(sigma)
        x = x_in.double() / c_in
        return ((STD**2 / (STD**2 + sigma**2) * x - c_skip * x) / c_out).to(x_in.dtype)


def _noise():
    return torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))


def test_ddim_and_diffusers_ddim_sample_the_same_images():
    process = DDPM()
    net = GaussianEpsNet(process)
    ours = ddim_sample(Denoiser(net, process), process, _noise(), 100, spacing="leading").samples
    peer = run_scheduler(diffusers_scheduler("ddim", process), net, _noise(), 100)
    torch.testing.assert_close(ours, peer, atol=2e-4, rtol=1e-3)
    assert ours.std().item() == pytest.approx(STD, rel=0.03)  # and both turn noise into the data's distribution


def test_edm_euler_and_diffusers_edm_euler_sample_the_same_images():
    process = EDM()
    net, scheduler = GaussianEDMNet(process), diffusers_scheduler("edm-euler", process)
    ours = edm_sample(Denoiser(net, process), _noise(), karras_sigmas(18), "euler").samples
    # diffusers starts from noise * init_noise_sigma, sqrt(sigma_max^2 + 1), where EDM starts from sigma_max.
    peer = run_scheduler(scheduler, net, _noise() * process.sigma_max / scheduler.init_noise_sigma, 18)
    torch.testing.assert_close(ours, peer, atol=2e-4, rtol=1e-3)


def test_heun_and_diffusers_heun_sample_the_same_images():
    process = DDPM()
    net, scheduler = GaussianEpsNet(process), diffusers_scheduler("heun", process)
    levels = karras_sigmas(10, process.sigma_min, process.sigma_max)
    output = edm_sample(Denoiser(net, process), _noise(), levels, "heun")
    peer = run_scheduler(scheduler, net, _noise() * process.sigma_max / scheduler.init_noise_sigma, 10)
    assert output.nfe == 19
    torch.testing.assert_close(output.samples, peer, atol=2e-3, rtol=1e-2)


def test_schedulers_refuse_processes_they_cannot_sample():
    with pytest.raises(ValueError, match="EDM process"):
        diffusers_scheduler("edm-euler", DDPM())
    with pytest.raises(ValueError, match="epsilon-predicting DDPM"):
        diffusers_scheduler("ddim", DDPM(prediction="v"))
    with pytest.raises(ValueError, match="one of"):
        diffusers_scheduler("plms", DDPM())


# The suite and the script


@pytest.mark.parametrize(
    "settings",
    [Settings(rounds=1, warmup=0), Settings(precision="bf16", channels_last=True, rounds=1, warmup=0)],
    ids=["fp32", "bf16-channels-last"],
)
def test_a_training_comparison_times_both_sides_under_each_setting(settings):
    config = unet_preset("digits16", dropout=0.0)
    build = (lambda: UNet(config), lambda: diffusers_unet(config))
    step, memory = compare_training(
        "networks", "digits16", build, (1, 16, 16), 0, 2, settings, convolutional=True, target=1.0
    )
    assert step.unit == "ms/step" and step.ours > 0 and step.peer > 0 and step.target == 1.0
    assert "0.7 M vs 0.7 M parameters" in step.setting
    assert step.profile is not None and memory.unit == "MiB"


def test_latent_diffit_is_compared_with_dit_in_flops_time_and_flops_utilisation():
    dit = dit_preset("digits16", num_classes=10)
    flops, step, memory, utilisation = diffit_rows(dit, Settings(rounds=1, warmup=0, peak_flops=1e12), SCALES["smoke"])
    assert flops.ours == pytest.approx(118.5, abs=0.1) and flops.peer == pytest.approx(118.6, abs=0.1)  # XL/2 GMACs
    assert step.unit == "ms/step" and memory.unit == "MiB"
    achieved = training_gflops(lambda: LatentDiffiT(latent_diffit_like(dit)), (1, 16, 16), 10) * 1e9 * 2
    assert utilisation.ours == pytest.approx(100 * achieved / (step.ours / 1e3) / 1e12)


def test_a_row_meets_its_target_only_in_the_right_direction():
    faster = Row("g", "n", "s", "ms/step", ours=9.0, peer=10.0, target=1.0)
    assert faster.met is True and not Row("g", "n", "s", "ms/step", 11.0, 10.0, target=1.0).met
    assert Row("g", "n", "s", "images/s", 11.0, 10.0, higher_is_better=True, target=1.0).met is True
    assert Row("g", "n", "s", "us", 1.0, 2.0, target=1.0, goal="x", goal_met=False).met is False
    assert Row("g", "n", "s", "MiB", 1.0, 2.0).met is None
    assert math.isnan(Row("g", "n", "s", "MiB", 1.0, 0.0).ratio)


def test_the_smoke_suite_runs_the_samplers_loader_and_evaluation_paths():
    rows = run(["samplers", "data", "evaluation"], Settings(rounds=1, warmup=0), SCALES["smoke"], on_row=lambda r: None)
    names = [row.name for row in rows]
    assert len([row for row in rows if row.group == "samplers"]) == 3
    assert any("CIFAR-10 loader" in name for name in names)
    fid = next(row for row in rows if row.group == "evaluation" and row.unit == "s")
    assert fid.goal_met, fid.setting  # our FID and clean-fid's, on the same features, agree
    with pytest.raises(ValueError, match="unknown sections"):
        run(["speed"], Settings(), SCALES["smoke"])


def test_a_row_that_misses_its_target_is_profiled_as_it_is_measured(monkeypatch):
    missed = Row("g", "slow", "s", "ms", 2.0, 1.0, target=1.0, profile=lambda: torch.ones(64).cumsum(0))
    met = Row("g", "fast", "s", "ms", 1.0, 2.0, target=1.0, profile=lambda: torch.ones(64).cumsum(0))
    monkeypatch.setitem(SECTIONS, "rows", lambda settings, scale: iter([missed, met]))
    rows = run(["rows"], Settings(), SCALES["smoke"], on_row=lambda row: None)
    assert "aten::cumsum" in rows[0].operators and rows[1].operators == ""


def _script():
    path = Path(__file__).parents[1] / "benchmarks" / "peers.py"
    spec = importlib.util.spec_from_file_location("peers_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_replaces_its_own_section_and_keeps_the_rest(tmp_path):
    script, results = _script(), tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nHand-written notes.\n")
    script.write_section(results, "cpu-cpu-fp32", "first")
    script.write_section(results, "cuda-full-bf16", "gpu")
    script.write_section(results, "cpu-cpu-fp32", "second")
    text = results.read_text()
    assert "Hand-written notes." in text and "gpu" in text and "second" in text and "first" not in text
    row = Row("g", "n", "s", "ms/step", 9.0, 10.0, spread=0.1, target=1.0)
    assert script.format_row(row) == "| n | s | 9 | 10 | ms/step | 0.90 ± 0.09 | <= 1.00 | yes |"


class _Sleeping:
    """An objective whose every call takes at least ``seconds``: the timer must count it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, model, batch):
        import time

        time.sleep(self.seconds)
        return {"loss": model(batch).square().mean()}


def test_time_training_steps_counts_the_objectives_work_and_trains_the_model():
    model = nn.Linear(3, 1)
    before = model.weight.detach().clone()
    seconds = time_training_steps(model, {"fast": _Sleeping(0.0), "slow": _Sleeping(0.02)}, torch.ones(4, 3), 3, 1)
    assert set(seconds) == {"fast", "slow"} and 0 < seconds["fast"] < 0.02 <= seconds["slow"]
    assert not torch.equal(model.weight, before)
