"""Training objectives. Each is a small callable: ``objective(model, batch) -> dict(loss=..., **logs)``."""

from diffbook.objectives.bcm import BCMLoss
from diffbook.objectives.denoising import DenoisingLoss, split_batch
from diffbook.objectives.iso import IsoLoss, isotropy_penalty
from diffbook.objectives.sadm import SADMLoss, structural_distance, structure_encoder
from diffbook.objectives.self_perceptual import SelfPerceptualLoss, frozen_middle_block_encoder
from diffbook.objectives.vlb import HybridLoss

__all__ = [
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
