"""The ``objective`` section of a config: ``kind`` and the options of that objective, which each objective's
module declares beside its class and registers here. A penalty (``iso``, ``sadm``) takes a ``base``: the objective
it adds to, a kind or a section of its own (``{kind: self_perceptual, form: paper}``), nested at will.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from diffbook.config.schema import Registry, option_names
from diffbook.diffusion.denoiser import Denoiser

Objective = Callable[..., dict[str, Tensor]]
"""``objective(model, batch, generator=None) -> dict(loss=..., **logs)``: what every objective is and the trainer
calls."""

OBJECTIVES = Registry[Objective]("objective")


@dataclass(frozen=True)
class ObjectiveContext:
    """What a builder may need besides its options: the model being trained (objectives built from it, such as
    the self-perceptual loss's frozen copy; None to validate only), one sample's shape, and the folder of the
    network's pretrained weights (``network.weights``) for objectives that load its companions."""

    model: Denoiser | None
    sample_shape: tuple[int, ...]
    weights: str | None = None

    def require_model(self, kind: str) -> Denoiser:
        if self.model is None:
            raise ValueError(f"objective.kind {kind!r} is built from the model: call experiment.build_objective(model)")
        return self.model


def build_objective(section: Mapping[str, Any], context: ObjectiveContext, where: str = "objective") -> Objective:
    """The objective of one config section; ``where`` is its place, for errors."""
    options = parse_objective(section, where)
    return OBJECTIVES.get(section["kind"], where).build(options, context)


def parse_objective(section: Mapping[str, Any], where: str = "objective") -> Any:
    """The options of ``section``, a nested ``base`` section checked too: every key and type, nothing built."""
    options = OBJECTIVES.parse(section, where)
    base = getattr(options, "base", None)
    if isinstance(base, Mapping):
        parse_objective(base, f"{where}.base")
    elif isinstance(base, str):
        OBJECTIVES.get(base, f"{where}.base")
    return options


def base_objective(
    base: str | Mapping[str, Any], label_dropout: float, context: ObjectiveContext, where: str
) -> Objective:
    """The objective under a penalty: ``base`` names a kind, which takes the penalty's ``label_dropout`` if it
    has one, or is a section of its own, which gives its own.

    A two-player objective (``sadm``) cannot be a base: the Trainer sees only the outermost objective's
    adversary, so it must be the outermost.
    """
    if isinstance(base, str):
        section: dict[str, Any] = {"kind": base}
        if "label_dropout" in option_names(OBJECTIVES.get(base, where).options):
            section["label_dropout"] = label_dropout
    elif label_dropout:
        raise ValueError(f"{where} is a section: give label_dropout inside it, not beside it")
    else:
        section = dict(base)
    objective = build_objective(section, context, where)
    if hasattr(objective, "adversary"):
        raise ValueError("a two-player objective (sadm) cannot be a base: make it the outermost objective")
    return objective
