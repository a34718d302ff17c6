"""The ``network`` section of a config: ``kind`` (a network family), ``preset`` (a named config of that family),
``overrides`` (fields of the family's config class) and ``init_from`` (a checkpoint to start training from).

Every family's config class has ``in_channels``, ``resolution`` and ``num_classes`` fields, except the toy MLP's,
whose samples are ``(dim,)`` points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from diffbook.config.schema import parse_options
from diffbook.nets.adm_unet import ADMUNet, ADMUNetConfig, adm_unet_preset
from diffbook.nets.diffit import DiffiTUNet, DiffiTUNetConfig, diffit_unet_preset
from diffbook.nets.diffusers_unet import StableDiffusionUNetConfig, load_stable_diffusion_unet
from diffbook.nets.dit import DiT, DiTConfig, dit_preset
from diffbook.nets.latent_diffit import LatentDiffiT, LatentDiffiTConfig, latent_diffit_preset
from diffbook.nets.mlp import TimeMLP
from diffbook.nets.unet import UNet, UNetConfig, unet_preset


@dataclass(frozen=True)
class TimeMLPConfig:
    """:class:`TimeMLP`'s arguments, the toy networks' config (they have no presets)."""

    dim: int = 2
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 128
    num_classes: int = 0
    embedding: str = "sinusoidal"
    two_times: bool = False


@dataclass(frozen=True)
class NetworkFamily:
    """A ``network.kind``: its config class, its preset lookup (None: configured by ``overrides`` alone), and the
    module built from a config, or for released weights the loader ``pretrained(config, weights)``."""

    config: type
    preset: Callable[..., Any] | None
    module: Callable[[Any], nn.Module] | None
    pretrained: Callable[[Any, str | None], nn.Module] | None = None  # builds from network.weights instead


NETWORKS: dict[str, NetworkFamily] = {
    "mlp": NetworkFamily(TimeMLPConfig, None, lambda config: TimeMLP(**dataclasses.asdict(config))),
    "unet": NetworkFamily(UNetConfig, unet_preset, UNet),
    "adm": NetworkFamily(ADMUNetConfig, adm_unet_preset, ADMUNet),
    "diffit_unet": NetworkFamily(DiffiTUNetConfig, diffit_unet_preset, DiffiTUNet),
    "diffit": NetworkFamily(LatentDiffiTConfig, latent_diffit_preset, LatentDiffiT),
    "dit": NetworkFamily(DiTConfig, dit_preset, DiT),
    "stable_diffusion": NetworkFamily(StableDiffusionUNetConfig, None, None, load_stable_diffusion_unet),
}


@dataclass(frozen=True)
class NetworkOptions:
    """The ``network`` section: which family, which preset, which fields replaced, which weights to start from:
    ``init_from``, a Trainer checkpoint, or ``weights``, a folder of released weights that the family loads
    (Stable Diffusion's diffusers folder), whose companions (its VAE, text encoder) the data and objective use."""

    kind: str
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    weights: str | None = None

    @classmethod
    def parse(cls, section: dict[str, Any], where: str = "network") -> NetworkOptions:
        options = parse_options(cls, section, where)
        family = network_family(options.kind, where)
        overrides = dict(options.overrides or {})
        parse_options(_all_optional(family.config), overrides, f"{where}.overrides")  # keys and types
        if family.preset is not None and options.preset is None:
            raise ValueError(f"{where}.preset is required for network.kind {options.kind!r}")
        if options.weights is not None and family.pretrained is None:
            raise ValueError(f"{where}.weights: network.kind {options.kind!r} trains from scratch; use init_from")
        return dataclasses.replace(options, overrides=overrides)

    @property
    def family(self) -> NetworkFamily:
        return network_family(self.kind)

    def config(self) -> Any:
        """The family's config object: the preset with ``overrides`` replaced (lists as tuples)."""
        overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in self.overrides.items()}
        family = self.family
        if family.preset is None:
            return family.config(**overrides)
        return family.preset(self.preset, **overrides)

    def build(self) -> nn.Module:
        """The raw network ``net(x, noise_labels, class_labels=None)``: freshly initialised, or for a family of
        released weights, those weights."""
        family = self.family
        if family.pretrained is not None:
            return family.pretrained(self.config(), self.weights)
        assert family.module is not None  # a family either builds from scratch or loads released weights
        return family.module(self.config())


def network_family(kind: str, where: str = "network") -> NetworkFamily:
    """The family of ``network.kind``; ``where`` places the section in the error."""
    if kind not in NETWORKS:
        raise ValueError(f"{where}.kind must be one of {', '.join(NETWORKS)}, got {kind!r}")
    return NETWORKS[kind]


def _all_optional(config: type) -> type:
    """``config`` with every field optional: ``overrides`` replaces some fields of a preset, not all."""
    return dataclasses.make_dataclass(
        config.__name__,
        [(f.name, f.type, dataclasses.field(default=None)) for f in dataclasses.fields(config) if f.init],
        namespace={"__module__": config.__module__},
    )
