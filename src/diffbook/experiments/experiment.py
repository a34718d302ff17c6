"""One run, from its resolved config: every section validated and typed once, and everything built from them.

A config has seven sections::

    source     free text: the paper table the config follows
    data       name (a toy set, an image dataset, or ``latents``) and that data's options
               (:mod:`diffbook.data.sources`)
    network    kind, preset, overrides and init_from (:mod:`diffbook.nets.registry`); init_from is a
               checkpoint to start training from (fine-tuning)
    process    kind (ddpm | edm | vp | ve | bcm) and that process's fields; bcm's two-time preconditioning
               wraps the network as a BidirectionalConsistency model f(x, t, u), the others as a Denoiser
    objective  kind and that objective's options (:mod:`diffbook.objectives.registry`); a penalty takes a base
    train      the fields of diffbook.train.TrainConfig (steps, batch_size, lr, warmup_steps, grad_clip, ...)
    sample     sampler (ddpm | ddim | heun | euler | consistency), steps, and that sampler's options
               (:mod:`diffbook.samplers.registry`)

Keys that a section leaves out take the defaults of the class they configure. Every key and its type is checked
when the experiment is made, so a typo anywhere is an error that names the closest valid keys rather than a
setting silently ignored, and ``--dry-run`` catches it before anything trains.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset

from diffbook.config import Config, apply_override, check_keys, parse_options, read_config, to_yaml
from diffbook.data.captions import CAPTION_DATA, CaptionData
from diffbook.data.sources import DATA, LATENT_DATA, ImageData, LatentData, ToyData
from diffbook.diffusion import BCMProcess, BidirectionalConsistency, Denoiser
from diffbook.diffusion.registry import PROCESSES
from diffbook.nets import holds_two_times, load_single_time_weights
from diffbook.nets.registry import NetworkOptions
from diffbook.objectives import ObjectiveContext, build_objective, parse_objective
from diffbook.runtime.files import load_weights
from diffbook.samplers import Sampler
from diffbook.train import TrainConfig, load_checkpoint

SECTIONS = ("source", "data", "network", "process", "objective", "train", "sample")
Model = Denoiser | BidirectionalConsistency


@dataclass(frozen=True, eq=False)
class Experiment:
    """A validated config: its typed sections, and the builders of its model, data and objective.

    ``config`` is the resolved config (overrides applied) as it is written to a run's ``config.yaml``.
    """

    config: Config
    data: ToyData | ImageData | LatentData | CaptionData
    network: NetworkOptions
    process: Any
    objective: Mapping[str, Any]
    train: TrainConfig
    sampler: Sampler

    @classmethod
    def load(cls, name_or_path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
        """The shipped config ``name`` (``"digits/edm"``) or a YAML file, with ``key.sub=value`` overrides."""
        return cls.from_config(read_config(name_or_path, overrides))

    @classmethod
    def from_config(cls, cfg: Config) -> Experiment:
        """Validate every section of ``cfg``; a ValueError names the first bad key or value."""
        check_keys(cfg, SECTIONS, "")
        for section in SECTIONS[1:]:
            if not isinstance(cfg.get(section), dict):
                raise ValueError(f"config section {section!r} must be a mapping, got {cfg.get(section)!r}")
        sampler = Sampler.from_section(cfg["sample"])
        if sampler.needs_discrete_process and cfg["process"].get("kind") != "ddpm":
            raise ValueError(
                f"the {sampler.name} sampler needs process.kind = ddpm, got {cfg['process'].get('kind')!r}"
            )
        experiment = cls(
            config=cfg,
            data=DATA.parse(cfg["data"], keep_key=True),
            network=NetworkOptions.parse(cfg["network"]),
            process=PROCESSES.parse(cfg["process"]),
            objective=cfg["objective"],
            train=parse_options(TrainConfig, cfg["train"], "train"),
            sampler=sampler,
        )
        parse_objective(cfg["objective"])
        experiment._check_resolution()
        return experiment

    def with_overrides(self, overrides: Iterable[str]) -> Experiment:
        """This experiment with more ``key.sub=value`` overrides (an evaluation's sampler, say)."""
        return Experiment.from_config(_overridden(self.config, overrides))

    def to_yaml(self) -> str:
        return to_yaml(self.config)

    @property
    def is_toy(self) -> bool:
        """Whether the data are 2-D toy points rather than images."""
        return isinstance(self.data, ToyData)

    @property
    def is_latent(self) -> bool:
        """Whether the model diffuses VAE latents (its samples decode to images)."""
        return self.data.name in (LATENT_DATA, CAPTION_DATA)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``(dim,)`` for toy points, ``(C, R, R)`` for images and latents."""
        config = self.network.config()
        if self.network.kind == "mlp":
            return (config.dim,)
        return (config.in_channels, config.resolution, config.resolution)

    @property
    def num_classes(self) -> int:
        """The network's number of classes; 0 for an unconditional model."""
        return self.network.config().num_classes

    def build_model(self) -> Model:
        """The network wrapped by the process's preconditioning, freshly initialised: the denoiser ``D(x; sigma)``,
        or for ``process.kind = bcm`` the consistency model ``f(x, t, u)``."""
        process = self.build_process()
        if isinstance(process, BCMProcess):
            return BidirectionalConsistency(self.network.build(), process)
        return Denoiser(self.network.build(), process)

    def build_process(self) -> Any:
        """The process, a copy of its own: nothing is shared between the models of a run."""
        return dataclasses.replace(self.process)

    def initial_model(self) -> Model:
        """:meth:`build_model` with ``network.init_from``'s weights loaded when it is set: what training starts
        from. Objectives built from it (the self-perceptual loss's frozen copy) keep these weights."""
        self._require_init_from()  # before a large network is built for nothing
        return self.load_init_weights(self.build_model())

    def load_init_weights(self, model: Model) -> Model:
        """Load ``network.init_from``, a Trainer checkpoint, into ``model`` in place (its EMA weights when it has
        them, as sampling uses); nothing when it is unset. A consistency model's single-time network starts the
        two-time network's u-branch (``W = [I | 0]``, BCM fine-tuning)."""
        path = self.network.init_from
        if path is None:
            return model
        self._require_init_from()
        state = load_checkpoint(path)
        weights = state["ema"] if state.get("ema") is not None else state["model"]
        net_weights = {k.removeprefix("net."): v for k, v in weights.items()}
        if getattr(model.net, "two_times", False) and not holds_two_times(model.net, net_weights):
            load_single_time_weights(model.net, net_weights)
            return model
        load_weights(model, weights, path)
        return model

    def _require_init_from(self) -> None:
        path = self.network.init_from
        if path is None or Path(path).is_file():
            return
        # A DiT starts from the released weights, which `import dit` turns into the checkpoint named here.
        if self.network.kind == "dit":
            size = 8 * self.network.config().resolution  # the VAE's latents are 8x smaller than the images
            release = f"DiT-XL-2-{size}x{size}.pt"
            fix = (
                f"import the released weights: python -m diffbook import dit {release} "
                f"--config imagenet{size}/dit --out {path}"
            )
        else:
            fix = "train the run it names first"
        raise FileNotFoundError(f"network.init_from {str(path)!r} not found: {fix}")

    def load_checkpoint(self, ckpt: str | Path, use_ema: bool = True) -> Model:
        """The model of a Trainer checkpoint (``{'model', 'ema', 'step'}``), EMA weights when there are, in eval."""
        require_checkpoint(ckpt)
        state = load_checkpoint(ckpt)
        model = self.build_model()
        load_weights(model, state["ema"] if use_ema and state.get("ema") is not None else state["model"], ckpt)
        return model.eval()

    @property
    def licence(self) -> str | None:
        """The licence the trained weights inherit: that of ``network.init_from``'s weights (a release brought in
        by ``python -m diffbook import``, say); None when training starts from scratch or the weights state none."""
        path = self.network.init_from
        if path is None or not Path(path).is_file():
            return None
        return load_checkpoint(path, mmap=True).get("licence")

    def record(self) -> dict[str, Any]:
        """What a run's checkpoints record beside the training state: the resolved config and the licence."""
        return {"config": self.config, "licence": self.licence}

    def build_dataset(self) -> Tensor | Dataset:
        """Toy points ``(n, 2)`` drawn with ``train.seed``, or an image or latent dataset (labelled only for
        class-conditional networks) with items ``(C, R, R)``."""
        return self.data.build(self.train.seed, self.num_classes > 0, self.network.weights)

    def build_objective(self, model: Model | None = None) -> Callable[..., dict[str, Tensor]]:
        """The objective ``objective(model, batch, generator=None) -> dict(loss=..., ...)``.

        Objectives built from the model being trained need ``model``, its initial weights already loaded
        (:meth:`initial_model`); the others ignore it.
        """
        context = ObjectiveContext(model, self.sample_shape, self.network.weights)  # type: ignore[arg-type]
        return build_objective(self.objective, context)

    def _check_resolution(self) -> None:
        resolution = getattr(self.data, "resolution", None)
        if self.network.kind == "mlp" or self.is_latent or resolution is None:
            return
        if resolution != self.network.config().resolution:
            built = self.network.config().resolution
            raise ValueError(f"data.resolution = {resolution} but the network is built for {built}")


def require_checkpoint(ckpt: str | Path) -> None:
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} not found; a training run writes RUN_DIR/checkpoint.pt")


def run_config(ckpt: str | Path, config: str | Path | None = None, overrides: Iterable[str] = ()) -> Experiment:
    """The experiment a checkpoint was trained with, ``overrides`` (``sample.steps=50``) applied: ``config`` when
    given, else the config the checkpoint carries, else (a checkpoint that carries none) ``config.yaml`` beside it."""
    require_checkpoint(ckpt)
    if config is None:
        carried = load_checkpoint(ckpt, mmap=True).get("config")
        if carried is not None:
            return Experiment.from_config(_overridden(carried, overrides))
    if config is not None:
        return Experiment.load(config, overrides)
    path = Path(ckpt).parent / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt} carries no config and {path} is not there; pass the run's --config")
    return Experiment.load(path, overrides)


def _overridden(cfg: Config, overrides: Iterable[str]) -> Config:
    cfg = copy.deepcopy(cfg)
    for override in overrides:
        apply_override(cfg, override)
    return cfg


__all__ = ["SECTIONS", "Experiment", "ImageData", "LatentData", "ToyData", "run_config"]
