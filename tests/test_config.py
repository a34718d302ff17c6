"""Configs: every shipped one builds, the CIFAR-10 ones carry their papers' settings, overrides and typos behave."""

import pytest
import torch

from diffbook.config import available_configs
from diffbook.experiments import Experiment
from diffbook.samplers import SamplerOutput

# The configs of released weights (Stable Diffusion's) build from those files: tests/test_self_perceptual.py
# runs them on a tiny random model of the same layout.
FROM_SCRATCH = [name for name in available_configs() if Experiment.load(name).network.weights is None]
SMALL_CONFIGS = ["toy/ddpm", "toy/edm", "toy/iso", "digits/ddpm", "digits/edm", "digits/iso"]


def test_configs_are_listed_sorted_by_dataset_then_method():
    names = available_configs()
    assert names == sorted(names) and {"cifar10/ddpm", "cifar10/edm", *SMALL_CONFIGS} <= set(names)
    assert all(name.count("/") == 1 for name in names)


@pytest.mark.parametrize("name", FROM_SCRATCH)
def test_every_config_builds_its_model_objective_sampler_and_train_config(name):
    experiment = Experiment.load(name)
    assert experiment.config["source"]
    with torch.device("meta"):  # no memory or init time for the 56 M-parameter networks
        model = experiment.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    assert callable(experiment.build_objective(model))
    assert callable(experiment.sampler)
    assert experiment.train.steps == experiment.config["train"]["steps"]


@pytest.mark.parametrize("name", SMALL_CONFIGS)
def test_small_configs_build_their_data_and_sample_with_a_real_model(name):
    experiment = Experiment.load(name, ["sample.steps=2"])
    data = experiment.build_dataset()
    item = data[0]
    assert item.shape == experiment.sample_shape  # unconditional: images without labels
    model = experiment.build_model().eval()
    noise = torch.randn(3, *experiment.sample_shape)
    out = experiment.sampler(model, noise, None, torch.Generator().manual_seed(0))
    assert isinstance(out, SamplerOutput) and out.samples.shape == noise.shape


@pytest.mark.parametrize(("name", "millions"), [("cifar10/ddpm", 35.7), ("cifar10/edm", 55.7)])
def test_cifar10_networks_have_the_papers_sizes(name, millions):
    with torch.device("meta"):
        model = Experiment.load(name).build_model()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)


def test_cifar10_ddpm_follows_ho_et_al():
    cfg = Experiment.load("cifar10/ddpm").config
    train = cfg["train"]
    assert (train["batch_size"], train["lr"], train["warmup_steps"], train["grad_clip"]) == (128, 2e-4, 5000, 1.0)
    assert train["steps"] == 800_000 and cfg["data"]["flip"] is True
    assert 0.5 ** (train["batch_size"] / train["ema_halflife_images"]) == pytest.approx(0.9999, abs=1e-9)
    assert cfg["process"] == dict(
        kind="ddpm", T=1000, schedule="linear", prediction="eps", beta_start=1e-4, beta_end=0.02
    )
    assert "Table 1" in cfg["source"] and "3.17" in cfg["source"]


def test_cifar10_edm_follows_config_f():
    cfg = Experiment.load("cifar10/edm").config
    train = cfg["train"]
    assert (train["batch_size"], train["lr"], train["grad_clip"]) == (512, 1e-3, None)
    assert train["warmup_steps"] * 512 == pytest.approx(10e6, rel=1e-4)
    assert train["steps"] * 512 == 200e6 and train["ema_halflife_images"] == 0.5e6
    assert cfg["network"]["overrides"]["dropout"] == 0.13 and cfg["process"]["kind"] == "edm"
    assert (cfg["sample"]["sampler"], cfg["sample"]["steps"]) == ("heun", 18)
    assert "Table 7" in cfg["source"] and "config F" in cfg["source"]


def test_overrides_are_parsed_as_yaml_scalars():
    experiment = Experiment.load(
        "digits/edm",
        [
            "train.lr=1e-3",
            "train.steps=7",
            "train.grad_clip=null",
            "data.flip=true",
            "network.overrides.channel_mult=[1, 1]",
        ],
    )
    cfg = experiment.config
    assert cfg["train"]["lr"] == 1e-3 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["steps"] == 7 and cfg["train"]["grad_clip"] is None and cfg["data"]["flip"] is True
    assert experiment.build_model().net.config.channel_mult == (1, 1)


@pytest.mark.parametrize(
    ("override", "unknown", "closest"),
    [
        ("train.stpes=3", "train.stpes", "train.steps"),
        ("process.P_men=0", "process.P_men", "process.P_mean"),  # kind-specific: EDM's fields
        ("network.overrides.dropuot=0", "network.overrides.dropuot", "network.overrides.dropout"),  # U-Net fields
        ("sampel.steps=3", "sampel", "sample"),
    ],
)
def test_an_unknown_key_is_an_error_naming_the_closest_valid_keys(override, unknown, closest):
    with pytest.raises(ValueError, match=rf"unknown config key '{unknown}'; closest valid keys: .*\b{closest}\b"):
        Experiment.load("digits/edm", [override])


def test_an_unknown_config_name_suggests_one():
    with pytest.raises(ValueError, match="Did you mean 'digits/edm'"):
        Experiment.load("digit/edm")


def test_an_override_without_a_value_is_an_error():
    with pytest.raises(ValueError, match="key.sub=value"):
        Experiment.load("toy/edm", ["train.steps"])


def test_a_config_file_loads_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(Experiment.load("toy/edm", ["train.steps=9"]).to_yaml())
    assert Experiment.load(path).config == Experiment.load("toy/edm", ["train.steps=9"]).config


def test_objective_keys_depend_on_its_kind():
    experiment = Experiment.load("toy/iso", ["objective.weight=0.3", "objective.form=sample"])
    objective = experiment.build_objective()
    assert (objective.weight, objective.form) == (0.3, "sample")
    with pytest.raises(ValueError, match="objective.weight"):
        Experiment.load("toy/iso", ["objective.weigth=0.3"])
    with pytest.raises(ValueError, match="objective.kind must be one of"):
        Experiment.load("toy/ddpm", ["objective.kind=isotropic"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=many", r"train\.steps must be an integer, got 'many'"),
        ("train.lr=true", r"train\.lr must be a number, got True"),
        ("objective.form=both", r"objective\.form must be one of 'batch', 'sample'"),
        ("network.overrides.channel_mult=3", r"network\.overrides\.channel_mult must be a list, got 3"),
        ("sample.S_churn=lots", r"sample\.S_churn must be a number"),
        ("data.n=null", r"data\.n must be an integer, got None"),
        ("process={kind: vp, beta_d: x}", r"process\.beta_d must be a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_an_error_naming_the_key_and_the_type(override, message):
    name = "toy/iso" if override.startswith(("objective", "data")) else "digits/edm"
    with pytest.raises(ValueError, match=message):
        Experiment.load(name, [override])


def test_a_missing_required_key_and_a_kind_that_needs_a_preset_are_errors():
    with pytest.raises(ValueError, match=r"data\.root is required"):
        Experiment.load("imagenet256/diffit", ["data={name: latents}"])
    with pytest.raises(ValueError, match=r"network\.preset is required"):
        Experiment.load("digits/edm", ["network.preset=null"])
    with pytest.raises(ValueError, match=r"network\.weights: network\.kind 'unet' trains from scratch"):
        Experiment.load("digits/edm", ["network.weights=somewhere"])


def test_the_sampler_of_a_discrete_process_is_checked_before_anything_runs():
    with pytest.raises(ValueError, match="the ddim sampler needs process.kind = ddpm"):
        Experiment.load("digits/edm", ["sample={sampler: ddim, steps: 10}"])
    experiment = Experiment.load("digits/ddpm", ["sample={sampler: ddim, steps: 7, eta: 0.5}"])
    assert (experiment.sampler.steps, experiment.sampler.options.eta, experiment.sampler.stochastic) == (7, 0.5, True)


def test_yaml_lists_become_the_tuples_the_frozen_network_configs_hold():
    experiment = Experiment.load("digits/edm", ["network.overrides.channel_mult=[1, 2]"])
    assert experiment.network.config().channel_mult == (1, 2)
