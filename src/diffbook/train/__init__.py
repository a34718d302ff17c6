"""Training: one loop for every objective, and EMA with EDM's half-life in images."""

from diffbook.train.ema import EMA, ema_decay
from diffbook.train.loop import TrainResult, infinite_batches, train

__all__ = ["EMA", "TrainResult", "ema_decay", "infinite_batches", "train"]
