"""Experiment configs: YAML files in the package, ``configs/<dataset>/<method>.yaml``, and what they build.

A config has seven sections::

    source     free text: the paper table the config follows
    data       name (a toy set, an image dataset, or ``latents``: a precompute-latents folder as root),
               n (toy only), split, resolution, flip, root
    network    kind (mlp, or a key of NETWORKS: unet | diffit_unet | diffit | dit), preset (of that kind),
               overrides (the fields of the kind's config class, or TimeMLP arguments), and
               init_from: a checkpoint to start training from (fine-tuning; see load_init_weights)
    process    kind (ddpm | edm | vp | ve | bcm) and that process's fields; bcm's two-time preconditioning
               wraps the network as a BidirectionalConsistency model f(x, t, u), the others as a Denoiser
    objective  kind (a key of OBJECTIVES) and the arguments of its builder; a penalty (iso, sadm) takes a base:
               the objective it adds to, a kind or a nested section ({kind: self_perceptual, form: paper})
    train      the fields of diffbook.train.TrainConfig (steps, batch_size, lr, warmup_steps, grad_clip, ...)
    sample     sampler (ddpm | ddim | heun | euler | consistency), steps, and that sampler's options; the
               diffusion samplers also take classifier-free guidance: cfg_scale, cfg_power, cfg_channels

Keys that a section leaves out take the defaults of the class they configure. Every key is checked, so a typo
anywhere is an error that names the closest valid keys rather than a setting silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from diffbook.data import TOY_DATASETS, load_image_dataset, sample_toy
from diffbook.data.latents import LatentDataset
from diffbook.diffusion import DDPM, EDM, VE, VP, BCMProcess, BidirectionalConsistency, Denoiser
from diffbook.nets import (
    DiffiTUNet,
    DiffiTUNetConfig,
    DiT,
    DiTConfig,
    LatentDiffiT,
    LatentDiffiTConfig,
    TimeMLP,
    UNet,
    UNetConfig,
    diffit_unet_preset,
    dit_preset,
    latent_diffit_preset,
    load_single_time_weights,
    unet_preset,
)
from diffbook.objectives import BCMLoss, DenoisingLoss, HybridLoss, IsoLoss, SADMLoss, SelfPerceptualLoss
from diffbook.objectives.sadm import structure_encoder
from diffbook.samplers import (
    SCHEDULES,
    GuidedDenoiser,
    SamplerOutput,
    consistency_sample,
    ddim_sample,
    ddpm_sample,
    edm_sample,
    karras_sigmas,
    schedule_nfe,
)
from diffbook.train import TrainConfig

Config = dict[str, Any]

PROCESSES: dict[str, type] = {"ddpm": DDPM, "edm": EDM, "vp": VP, "ve": VE, "bcm": BCMProcess}


@dataclass(frozen=True)
class NetworkKind:
    """A network family of ``network.kind``: its config class, its preset lookup and the module it configures.

    Every config class has ``in_channels``, ``resolution`` and ``num_classes`` fields.
    """

    config: type
    preset: Callable[..., Any]
    module: type[torch.nn.Module]


NETWORKS: dict[str, NetworkKind] = {
    "unet": NetworkKind(UNetConfig, unet_preset, UNet),
    "diffit_unet": NetworkKind(DiffiTUNetConfig, diffit_unet_preset, DiffiTUNet),
    "diffit": NetworkKind(LatentDiffiTConfig, latent_diffit_preset, LatentDiffiT),
    "dit": NetworkKind(DiTConfig, dit_preset, DiT),
}

LATENT_DATA = "latents"  # data.name of a precompute-latents folder

# Classifier-free guidance of the diffusion samplers (GuidedDenoiser's scale, power and channels).
_GUIDANCE_OPTIONS = ("cfg_scale", "cfg_power", "cfg_channels")
_EDM_SAMPLER_OPTIONS = ("sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise", *_GUIDANCE_OPTIONS)
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "ddpm": ("variance", "clip_denoised", *_GUIDANCE_OPTIONS),
    "ddim": ("eta", "spacing", "clip_denoised", *_GUIDANCE_OPTIONS),
    "heun": _EDM_SAMPLER_OPTIONS,
    "euler": _EDM_SAMPLER_OPTIONS,
    "consistency": ("schedule",),  # a list of chains of noise levels; default: SCHEDULES[steps]
}


def _iso_loss(
    weight: float = 0.0,
    form: str = "batch",
    label_dropout: float = 0.0,
    base: str | dict = "denoising",
    model: Denoiser | None = None,
    sample_shape: tuple[int, ...] = (),
) -> IsoLoss:
    return IsoLoss(weight, form, base_objective(base, label_dropout, model, sample_shape))


def _self_perceptual_loss(
    model: Denoiser | None, form: str = "paper", label_dropout: float = 0.0, mse_weight: float = 0.0
) -> SelfPerceptualLoss:
    if model is None:
        raise ValueError("objective.kind 'self_perceptual' is built from the model: call build_objective(cfg, model)")
    return SelfPerceptualLoss.from_model(model, form=form, label_dropout=label_dropout, mse_weight=mse_weight)


SADM_INPUT_SPACES = ("data", "pixels")


def _sadm_loss(
    sample_shape: tuple[int, ...],
    weight: float = 0.3,
    affinity: str = "cosine",
    mismatch: str = "l1",
    gate: float | None = None,
    weighting: str = "uniform",
    adversary_lr: float = 1e-4,
    adversary_steps: int = 1,
    encoder: str | None = None,
    encoder_width: int | None = None,
    feature_dim: int | None = None,
    input_space: str = "data",
    vae: str | None = None,
    base: str | dict = "denoising",
    label_dropout: float = 0.0,
    model: Denoiser | None = None,
) -> SADMLoss:
    # encoder: points for points and images for images unless named (latents: the latent encoder);
    # input_space: pixels decodes a latent model's samples with the frozen VAE before the encoder.
    base_loss = base_objective(base, label_dropout, model, sample_shape)
    if input_space not in SADM_INPUT_SPACES:
        raise ValueError(f"objective.input_space must be one of {', '.join(SADM_INPUT_SPACES)}, got {input_space!r}")
    to_encoder_input = None
    if input_space == "pixels":
        from diffbook.latents import SD_VAE, VAEDecoder, load_vae

        to_encoder_input = VAEDecoder(load_vae(vae or SD_VAE))
        sample_shape = (3, *(8 * size for size in sample_shape[1:]))
    kind = encoder or ("points" if len(sample_shape) == 1 else "images")
    return SADMLoss(
        structure_encoder(kind, sample_shape, encoder_width, feature_dim),
        weight,
        affinity,
        mismatch,
        gate,
        weighting,
        adversary_lr,
        adversary_steps,
        base_loss,
        to_encoder_input,
    )


# kind -> a callable whose keyword arguments are the section's keys, and what build_objective supplies (not
# keys): ``model``, the model being trained, for objectives built from it; ``sample_shape``, one sample's shape.
OBJECTIVES: dict[str, Callable[..., Callable]] = {
    "denoising": DenoisingLoss,
    "iso": _iso_loss,
    "self_perceptual": _self_perceptual_loss,
    "bcm": BCMLoss,
    "hybrid": HybridLoss,
    "sadm": _sadm_loss,
}
_SUPPLIED = ("model", "sample_shape")


def base_objective(
    base: str | dict, label_dropout: float, model: Denoiser | None, sample_shape: tuple[int, ...]
) -> Callable:
    """The objective under a penalty (``iso``, ``sadm``): ``base`` names a kind, which takes the penalty's
    ``label_dropout``, or is a section of its own (``{kind: self_perceptual, form: paper}``), nested at will.

    A two-player objective (``sadm``) cannot be a base: the Trainer sees only the outermost objective's
    adversary, so it must be the outermost.
    """
    if isinstance(base, str):
        section = {"kind": base}
        if "label_dropout" in inspect.signature(OBJECTIVES.get(base, DenoisingLoss)).parameters:
            section["label_dropout"] = label_dropout
    elif label_dropout:
        raise ValueError("objective.base is a section: give label_dropout inside it, not beside it")
    else:
        section = base
    objective = objective_from_section(section, model, sample_shape, "objective.base")
    if hasattr(objective, "adversary"):
        raise ValueError("a two-player objective (sadm) cannot be a base: make it the outermost objective")
    return objective


def objective_from_section(
    section: dict[str, Any], model: Denoiser | None, sample_shape: tuple[int, ...], name: str = "objective"
) -> Callable:
    """The objective of one config section (``kind`` and its builder's arguments); ``name`` is its place, for
    errors. Builders that take ``model`` or ``sample_shape`` get them."""
    kind = section.get("kind")
    if kind not in OBJECTIVES:
        raise ValueError(f"{name}.kind must be one of {', '.join(OBJECTIVES)}, got {kind!r}")
    arguments = {k: v for k, v in section.items() if k != "kind"}
    parameters = inspect.signature(OBJECTIVES[kind]).parameters
    supplied = {"model": model, "sample_shape": sample_shape}
    arguments.update({key: value for key, value in supplied.items() if key in parameters})
    return OBJECTIVES[kind](**arguments)


_FIXED_KEYS: dict[str, tuple[str, ...]] = {
    "": ("source", "data", "network", "process", "objective", "train", "sample"),
    "data": ("name", "n", "split", "resolution", "flip", "root"),
    "network": ("kind", "preset", "overrides", "init_from"),
    "train": tuple(f.name for f in dataclasses.fields(TrainConfig)),
}


class _Loader(yaml.SafeLoader):
    """A safe loader that reads ``1e-3`` as a float: PyYAML follows YAML 1.1, where a float needs a dot."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)?|\.\d[\d_]*(?:[eE][-+]?\d+)?|\.inf|\.Inf|\.INF|\.nan)$"),
    list("-+0123456789."),
)  # Appended after the int resolver, which PyYAML tries first, so "3" stays an int.


def parse_value(text: str) -> Any:
    """A YAML scalar or flow collection: ``3`` -> int, ``1e-3`` -> float, ``null`` -> None, ``[1, 2]`` -> list."""
    return yaml.load(text, Loader=_Loader)


def _configs_root() -> resources.abc.Traversable:
    return resources.files("diffbook") / "configs"


def available_configs() -> list[str]:
    """The shipped config names, ``<dataset>/<method>``, sorted."""
    return sorted(
        f"{dataset.name}/{path.name.removesuffix('.yaml')}"
        for dataset in _configs_root().iterdir()
        if dataset.is_dir()
        for path in dataset.iterdir()
        if path.name.endswith(".yaml")
    )


def _read_config_text(name_or_path: str | Path) -> str:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        return path.read_text()
    name = str(name_or_path)
    if name not in available_configs():
        close = difflib.get_close_matches(name, available_configs(), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown config {name!r}.{hint} Shipped configs: {', '.join(available_configs())}.")
    return (_configs_root() / f"{name}.yaml").read_text()


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """The config ``name`` (e.g. ``"digits/edm"``) or YAML file, with ``key.sub=value`` overrides applied.

    Values are parsed as YAML (``train.lr=1e-3`` is a float, ``train.grad_clip=null`` is None). Raises
    ValueError for an unknown key, naming the closest valid ones.
    """
    cfg = yaml.load(_read_config_text(name_or_path), Loader=_Loader) or {}
    for override in overrides:
        apply_override(cfg, override)
    check_keys(cfg)
    return cfg


def apply_override(cfg: Config, override: str) -> None:
    """Set ``cfg[a][b] = value`` in place for ``override = "a.b=value"``; missing sections are created."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ValueError(f"an override is key.sub=value, got {override!r}")
    *parents, leaf = key.strip().split(".")
    node = cfg
    for depth, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"cannot set {key!r}: {'.'.join(parents[: depth + 1])!r} is a value, not a section")
    node[leaf] = parse_value(text)


def valid_keys(cfg: Config, section: str) -> tuple[str, ...]:
    """The keys allowed in ``section`` (dotted, ``""`` for the top level); some depend on its ``kind``."""
    if section in _FIXED_KEYS:
        return _FIXED_KEYS[section]
    if section == "process":
        kind = _kind(cfg, "process", PROCESSES)
        return ("kind", *(f.name for f in dataclasses.fields(PROCESSES[kind]) if f.init))
    if section == "objective" or section.startswith("objective."):  # objective.base may be a section too
        node = _section(cfg, section)
        if node.get("kind") not in OBJECTIVES:
            raise ValueError(f"{section}.kind must be one of {', '.join(OBJECTIVES)}, got {node.get('kind')!r}")
        builder = OBJECTIVES[node["kind"]]
        return ("kind", *(name for name in inspect.signature(builder).parameters if name not in _SUPPLIED))
    if section == "sample":
        sampler = _kind(cfg, "sample", SAMPLER_OPTIONS, key="sampler")
        return ("sampler", "steps", *SAMPLER_OPTIONS[sampler])
    if section == "network.overrides":
        kind = _kind(cfg, "network", ("mlp", *NETWORKS))
        if kind != "mlp":
            return tuple(f.name for f in dataclasses.fields(NETWORKS[kind].config))
        return tuple(inspect.signature(TimeMLP).parameters)
    raise ValueError(f"unknown config section {section!r}")


def _kind(cfg: Config, section: str, choices: Iterable[str], key: str = "kind") -> str:
    value = cfg.get(section, {}).get(key)
    if value not in choices:
        raise ValueError(f"{section}.{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _section(cfg: Config, section: str) -> Any:
    node = cfg
    for part in filter(None, section.split(".")):
        node = node[part]
    return node


def check_keys(cfg: Config, section: str = "") -> None:
    """Raise ValueError on the first key of ``cfg`` that its section does not allow, naming the closest ones."""
    node = _section(cfg, section)
    if not isinstance(node, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {node!r}")
    allowed = valid_keys(cfg, section)
    for key, value in node.items():
        path = f"{section}.{key}" if section else key
        if key not in allowed:
            prefix = f"{section}." if section else ""
            close = difflib.get_close_matches(str(key), allowed, n=3, cutoff=0.5) or allowed
            raise ValueError(f"unknown config key {path!r}; closest valid keys: {', '.join(prefix + k for k in close)}")
        if isinstance(value, dict):
            check_keys(cfg, path)


def to_yaml(cfg: Config) -> str:
    """The config as YAML, in its section order."""
    return yaml.safe_dump(cfg, sort_keys=False, width=120)


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """YAML lists as tuples, which the frozen, hashable network configs expect."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def is_toy(cfg: Config) -> bool:
    """Whether the data are 2-D toy points rather than images."""
    return cfg["data"]["name"] in TOY_DATASETS


def network_config(cfg: Config) -> Any:
    """The config object (``UNetConfig``, ``DiffiTUNetConfig``, ...) of a network with a preset: not ``mlp``."""
    network = cfg["network"]
    kind = _kind(cfg, "network", NETWORKS)
    return NETWORKS[kind].preset(network["preset"], **_tuples(network.get("overrides") or {}))


def build_network(cfg: Config) -> torch.nn.Module:
    """The raw network ``net(x, noise_labels, class_labels=None)``."""
    network = cfg["network"]
    if network["kind"] == "mlp":
        return TimeMLP(**_tuples(network.get("overrides") or {}))
    config = network_config(cfg)
    resolution = cfg["data"].get("resolution")
    if cfg["data"]["name"] != LATENT_DATA and resolution is not None and resolution != config.resolution:
        raise ValueError(f"data.resolution = {resolution} but the network is built for {config.resolution}")
    return NETWORKS[network["kind"]].module(config)


def build_process(cfg: Config) -> DDPM | EDM | VP | VE:
    fields = dict(cfg["process"])
    return PROCESSES[fields.pop("kind")](**fields)


def build_model(cfg: Config) -> Denoiser | BidirectionalConsistency:
    """The network wrapped by the process's preconditioning, freshly initialised: the denoiser ``D(x; sigma)``,
    or for ``process.kind = bcm`` the consistency model ``f(x, t, u)``."""
    check_keys(cfg)
    process = build_process(cfg)
    wrapper = BidirectionalConsistency if isinstance(process, BCMProcess) else Denoiser
    return wrapper(build_network(cfg), process)


def load_init_weights(model: Denoiser, cfg: Config) -> Denoiser:
    """Load ``network.init_from``, a Trainer checkpoint, into ``model`` in place (its EMA weights when it has
    them, as sampling uses); nothing when the key is unset. Returns ``model``.

    Training reads it; a run that resumes from its own checkpoint then overwrites these weights, but objectives
    built in between (the self-perceptual loss's frozen copy) keep them.
    """
    path = cfg["network"].get("init_from")
    if path is None:
        return model
    if not Path(path).is_file():
        raise FileNotFoundError(f"network.init_from {str(path)!r} not found: train the run it names first")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    if getattr(model.net, "two_times", False) and "net.embed.merge.weight" not in weights:
        # A consistency model's single-time network: BCM fine-tuning starts the u-branch from it (W = [I | 0]).
        load_single_time_weights(model.net, {k.removeprefix("net."): v for k, v in weights.items()})
        return model
    model.load_state_dict(weights)
    return model


def sample_shape(cfg: Config) -> tuple[int, ...]:
    """The shape of one sample: ``(dim,)`` for toy points, ``(C, R, R)`` for images."""
    network = cfg["network"]
    if network["kind"] == "mlp":
        return ((network.get("overrides") or {}).get("dim", 2),)
    config = network_config(cfg)
    return (config.in_channels, config.resolution, config.resolution)


def num_classes(cfg: Config) -> int:
    """The network's number of classes; 0 for an unconditional model."""
    overrides = cfg["network"].get("overrides") or {}
    if cfg["network"]["kind"] == "mlp":
        return overrides.get("num_classes", 0)
    return network_config(cfg).num_classes


class ImagesOnly(Dataset):
    """The images of an ``(image, label)`` dataset, for unconditional models, whose networks refuse labels."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        return self.dataset[index][0]


def build_dataset(cfg: Config) -> Tensor | Dataset:
    """Toy points ``(n, 2)`` drawn with ``train.seed``, or an image dataset (labelled only for class-conditional
    networks) with items ``(C, R, R)`` in [-1, 1]."""
    data = cfg["data"]
    if is_toy(cfg):
        return sample_toy(data["name"], data["n"], seed=cfg["train"].get("seed", 0))
    if data["name"] == LATENT_DATA:
        latents = LatentDataset(data["root"])
        return latents if num_classes(cfg) else ImagesOnly(latents)
    dataset = load_image_dataset(
        data["name"],
        root=data.get("root", "data"),
        split=data.get("split", "train"),
        resolution=data.get("resolution"),
        flip=data.get("flip", False),
    )
    return dataset if num_classes(cfg) else ImagesOnly(dataset)


def build_train_config(cfg: Config) -> TrainConfig:
    return TrainConfig(**cfg["train"])


def build_objective(cfg: Config, model: Denoiser | None = None) -> Callable:
    """The objective ``objective(model, batch, generator=None) -> dict(loss=..., ...)`` of ``cfg["objective"]``.

    Objectives built from the model being trained (the self-perceptual loss freezes a copy of it) need ``model``,
    with its initial weights already loaded (:func:`load_init_weights`); the others ignore it.
    """
    return objective_from_section(cfg["objective"], model, sample_shape(cfg))


@dataclass(frozen=True)
class Sampler:
    """A configured sampler: ``sampler(denoiser, noise, class_labels, generator) -> SamplerOutput``.

    ``noise: (B, ...)`` is standard normal; ``generator`` feeds any noise the sampler adds on the way. The
    options ``cfg_scale``, ``cfg_power`` and ``cfg_channels`` wrap the denoiser in classifier-free guidance
    (:class:`~diffbook.samplers.GuidedDenoiser`'s scale, power-cosine exponent and guided channels).
    """

    name: str
    steps: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws noise after the initial one (and so needs ``generator``)."""
        if self.name == "ddpm":
            return True
        if self.name == "consistency":
            return len(self.schedule) > 1  # each chain after the first starts with fresh noise
        if self.name == "ddim":
            return self.options.get("eta", 0.0) > 0
        return self.options.get("S_churn", 0.0) > 0

    def __call__(
        self,
        denoiser: Denoiser,
        noise: Tensor,
        class_labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SamplerOutput:
        if self.name == "consistency":
            return consistency_sample(denoiser, noise, self.schedule, class_labels=class_labels, generator=generator)
        denoiser = self._guided(denoiser)
        if self.name == "ddpm":
            return ddpm_sample(denoiser, denoiser.process, noise, self.steps, **self._kwargs(class_labels, generator))
        if self.name == "ddim":
            return ddim_sample(denoiser, denoiser.process, noise, self.steps, **self._kwargs(class_labels, generator))
        options = self._sampler_options
        sigmas = karras_sigmas(
            self.steps,
            options.pop("sigma_min", None) or denoiser.process.sigma_min,
            options.pop("sigma_max", None) or denoiser.process.sigma_max,
            options.pop("rho", 7.0),
        )
        return edm_sample(denoiser, noise, sigmas, self.name, class_labels=class_labels, generator=generator, **options)

    def _kwargs(self, class_labels: Tensor | None, generator: torch.Generator | None) -> dict[str, Any]:
        return dict(self._sampler_options, class_labels=class_labels, generator=generator)

    @property
    def _sampler_options(self) -> dict[str, Any]:
        return {k: v for k, v in self.options.items() if k not in _GUIDANCE_OPTIONS}

    def _guided(self, denoiser: Denoiser) -> Denoiser | GuidedDenoiser:
        scale = self.options.get("cfg_scale")
        if scale is None or scale == 1.0:
            return denoiser
        return GuidedDenoiser(
            denoiser, scale, channels=self.options.get("cfg_channels"), power=self.options.get("cfg_power")
        )

    @property
    def nfe(self) -> int:
        """Network calls per sample: one per step, but two for each of Heun's steps except the last (to
        ``sigma = 0``, an Euler step); a consistency schedule's jumps. Guidance batches its two calls as one."""
        if self.name == "consistency":
            return schedule_nfe(self.schedule)
        return 2 * self.steps - 1 if self.name == "heun" else self.steps

    @property
    def schedule(self) -> tuple[tuple[float, ...], ...]:
        """The consistency sampler's chains of noise levels: ``options["schedule"]``, else ``SCHEDULES[steps]``."""
        schedule = self.options.get("schedule") or SCHEDULES[self.steps]
        return tuple(tuple(float(level) for level in chain) for chain in schedule)


def build_sampler(cfg: Config) -> Callable[..., SamplerOutput]:
    """The sampler of ``cfg["sample"]``; DDPM's and DDIM's need the discrete ``ddpm`` process."""
    options = dict(cfg["sample"])
    name, steps = options.pop("sampler"), options.pop("steps")
    if name in ("ddpm", "ddim") and cfg["process"]["kind"] != "ddpm":
        raise ValueError(f"the {name} sampler needs process.kind = ddpm, got {cfg['process']['kind']!r}")
    if name == "consistency":
        _check_consistency_steps(steps, options.get("schedule"))
    return Sampler(name, steps, options)


def _check_consistency_steps(steps: int, schedule: list | None) -> None:
    # For the consistency sampler ``steps`` is its NFE: it picks one of SCHEDULES, or must match the schedule.
    if schedule is None and steps not in SCHEDULES:
        raise ValueError(
            f"sample.steps = {steps} has no default consistency schedule (NFE {list(SCHEDULES)}): give sample.schedule"
        )
    if schedule is not None and schedule_nfe(schedule) != steps:
        raise ValueError(f"sample.schedule makes {schedule_nfe(schedule)} network calls but sample.steps = {steps}")
