"""Training objectives. Each is a small callable: ``objective(model, batch) -> dict(loss=..., **logs)``."""

from diffbook.objectives.bcm import BCMLoss
from diffbook.objectives.denoising import DenoisingLoss, split_batch
from diffbook.objectives.iso import IsoLoss, IsoOptions, isotropy_penalty, isotropy_per_sample
from diffbook.objectives.latent_text import LatentTextObjective, LatentTextOptions
from diffbook.objectives.registry import OBJECTIVES, ObjectiveContext, build_objective, parse_objective
from diffbook.objectives.sadm import SADMLoss, SADMOptions, structural_distance, structure_encoder
from diffbook.objectives.self_perceptual import SelfPerceptualLoss, SelfPerceptualOptions, frozen_middle_block_encoder
from diffbook.objectives.vlb import HybridLoss

__all__ = [
    "LatentTextObjective",
    "LatentTextOptions",
    "OBJECTIVES",
    "IsoOptions",
    "ObjectiveContext",
    "SADMOptions",
    "SelfPerceptualOptions",
    "build_objective",
    "isotropy_per_sample",
    "parse_objective",
    "BCMLoss",
    "DenoisingLoss",
    "HybridLoss",
    "IsoLoss",
    "SADMLoss",
    "SelfPerceptualLoss",
    "frozen_middle_block_encoder",
    "isotropy_penalty",
    "split_batch",
    "structural_distance",
    "structure_encoder",
]
