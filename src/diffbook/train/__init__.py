"""Training: one loop for every objective, in one process or under ``torchrun``, with resumable checkpoints."""

from diffbook.train.checkpoint import load_checkpoint, save_checkpoint
from diffbook.train.ema import EMA, ema_decay
from diffbook.train.loop import infinite_batches, train
from diffbook.train.trainer import TrainConfig, Trainer, TrainResult, TwoPlayerObjective

__all__ = [
    "EMA",
    "TrainConfig",
    "TrainResult",
    "TwoPlayerObjective",
    "Trainer",
    "ema_decay",
    "infinite_batches",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
