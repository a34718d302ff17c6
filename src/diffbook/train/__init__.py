"""Training: one loop for every objective, in one process or under ``torchrun``, with resumable checkpoints."""

from diffbook.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from diffbook.train.config import TrainConfig
from diffbook.train.ema import EMA, ema_decay
from diffbook.train.loop import infinite_batches, train
from diffbook.train.players import TwoPlayerObjective
from diffbook.train.trainer import Trainer, TrainResult

__all__ = [
    "CheckpointError",
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
