"""How a run trains: the Trainer's options, validated when they are built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

from diffbook.runtime.precision import AUTOCAST_DTYPES


@dataclass
class TrainConfig:
    """How long and how to train. ``batch_size`` is global: each of the ``W`` processes draws ``batch_size / W``.

    ``ema_rampup_ratio``: EDM's ramp-up of the EMA half-life (:func:`~diffbook.train.ema.ema_decay`); None: none.
    ``precision``: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient scaler; CUDA only).
    ``*_every`` count optimizer steps; ``sample_every = 0`` never samples. ``keep_checkpoints`` keeps a
    ``checkpoint-{step:07d}.pt`` snapshot beside the latest ``checkpoint.pt`` at every save. Every step's loss is
    checked for NaN and inf; ``finite_check_every`` steps pass between checks, each of which waits for the device.
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    grad_clip: float | None = None
    ema_halflife_images: float | None = None
    ema_rampup_ratio: float | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    sample_every: int = 0
    finite_check_every: int = 1
    num_workers: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        # YAML gives a list, of any length: _checks refuses all but two numbers.
        self.betas = cast(tuple[float, float], tuple(self.betas))
        problems = [message for ok, message in self._checks() if not ok]
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def _checks(self) -> list[tuple[bool, str]]:
        return [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be None or > 0, got {self.grad_clip}"),
            (
                self.ema_halflife_images is None or self.ema_halflife_images > 0,
                f"ema_halflife_images must be None or > 0, got {self.ema_halflife_images}",
            ),
            (
                self.ema_rampup_ratio is None or self.ema_rampup_ratio > 0,
                f"ema_rampup_ratio must be None or > 0, got {self.ema_rampup_ratio}",
            ),
            (
                self.precision in AUTOCAST_DTYPES,
                f"precision must be one of {list(AUTOCAST_DTYPES)}, got {self.precision!r}",
            ),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.sample_every >= 0, f"sample_every must be >= 0 (0 = never), got {self.sample_every}"),
            (self.finite_check_every >= 1, f"finite_check_every must be >= 1, got {self.finite_check_every}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (
                len(self.betas) == 2 and all(0 <= beta < 1 for beta in self.betas),
                f"betas must be two numbers in [0, 1), got {self.betas}",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
        ]
