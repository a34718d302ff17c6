"""Training objectives. Each is a small callable: ``objective(model, batch) -> dict(loss=..., **logs)``."""

from diffbook.objectives.denoising import DenoisingLoss, split_batch
from diffbook.objectives.iso import IsoLoss, isotropy_penalty

__all__ = ["DenoisingLoss", "IsoLoss", "isotropy_penalty", "split_batch"]
