"""Named network configurations: every network module keeps a dict of frozen config dataclasses by name, and
checks its input against its config."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

from torch import Tensor

if TYPE_CHECKING:
    from _typeshed import DataclassInstance  # typeshed's protocol of a dataclass; it exists only for checkers

PresetConfig = TypeVar("PresetConfig", bound="DataclassInstance")


def replace_preset(presets: dict[str, PresetConfig], name: str, kind: str, **overrides: Any) -> PresetConfig:
    """``presets[name]`` with the fields in ``overrides`` replaced; a ValueError that lists the presets of this
    ``kind`` (e.g. ``"U-Net"``) when ``name`` is not one of them."""
    if name not in presets:
        raise ValueError(f"unknown {kind} preset {name!r}; presets are {', '.join(presets)}")
    return dataclasses.replace(presets[name], **overrides)


def check_image_input(x: Tensor, config: Any) -> None:
    """A one-line ValueError unless ``x`` is ``(B, config.in_channels, config.resolution, config.resolution)``."""
    C, R = config.in_channels, config.resolution
    if x.ndim != 4 or tuple(x.shape[1:]) != (C, R, R):
        raise ValueError(f"expected input of shape (B, {C}, {R}, {R}), got {tuple(x.shape)}")
