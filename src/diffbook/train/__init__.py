"""Training: one loop for every objective, in one process or under ``torchrun``, with resumable checkpoints."""

from diffbook.train.checkpoint import load_checkpoint, save_checkpoint
from diffbook.train.distributed import DistributedContext, cleanup, init_distributed
from diffbook.train.ema import EMA, ema_decay
from diffbook.train.loop import infinite_batches, train
from diffbook.train.timing import print_step_costs, time_training_steps
from diffbook.train.trainer import TrainConfig, Trainer, TrainResult, TwoPlayerObjective

__all__ = [
    "EMA",
    "DistributedContext",
    "TrainConfig",
    "TrainResult",
    "TwoPlayerObjective",
    "Trainer",
    "cleanup",
    "ema_decay",
    "infinite_batches",
    "init_distributed",
    "load_checkpoint",
    "print_step_costs",
    "save_checkpoint",
    "time_training_steps",
    "train",
]
