"""The one-call form of the :class:`~diffbook.train.trainer.Trainer` that notebooks use: no run directory."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from diffbook.objectives.registry import Objective
from diffbook.train.batches import EpochBatches
from diffbook.train.config import TrainConfig
from diffbook.train.trainer import Trainer, TrainResult


def infinite_batches(
    data: Tensor | Dataset, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[Tensor | list]:
    """Shuffled minibatches, epoch after epoch: rows of a tensor, or items of a dataset collated."""
    return iter(EpochBatches(data, batch_size, seed=_draw_seed(generator)))


def train(
    model: nn.Module,
    objective: Objective,
    data: Tensor | Dataset,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    ema_halflife_images: float | None = None,
    grad_clip: float | None = None,
    warmup_steps: int = 0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place with Adam for ``steps`` steps and return the loss history.

    ``data``: a tensor of samples ``(N, ...)`` or a dataset of ``(x, label)``. ``warmup_steps`` ramps the
    learning rate linearly from 0. ``generator`` seeds the data order and the objective's noise (the global
    generator does when it is None, so ``seed_everything`` makes a run repeatable). ``progress`` shows a tqdm
    bar (``TQDM_DISABLE=1`` hides it everywhere).
    """
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=warmup_steps,
        grad_clip=grad_clip,
        ema_halflife_images=ema_halflife_images,
        seed=_draw_seed(generator),
    )
    return Trainer(model, objective, data, config, run_dir=None, progress=progress, desc=desc).fit()


def _draw_seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(2**62, (), generator=generator))
