"""Training objectives. Each is a small callable: ``objective(model, batch) -> dict(loss=..., **logs)``."""

from diffbook.objectives.denoising import DenoisingLoss, split_batch

__all__ = ["DenoisingLoss", "split_batch"]
