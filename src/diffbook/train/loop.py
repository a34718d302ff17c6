"""One training loop for every objective: draw a batch, call ``objective(model, batch)``, step, average."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from diffbook.progress import progress_bar
from diffbook.train.ema import EMA, ema_decay

Objective = Callable[..., dict[str, Tensor]]


@dataclass
class TrainResult:
    """The loss after every step, and the EMA copy of the model when one was kept."""

    losses: list[float] = field(default_factory=list)
    ema: nn.Module | None = None

    def smoothed(self, window: int = 50) -> list[float]:
        """Running mean of the loss over ``window`` steps, for plots."""
        losses = torch.tensor(self.losses)
        kernel = torch.ones(min(window, len(losses))) / min(window, len(losses))
        return torch.nn.functional.conv1d(losses[None, None], kernel[None, None]).flatten().tolist()


def infinite_batches(
    data: Tensor | Dataset, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[Tensor | list]:
    """Shuffled minibatches, epoch after epoch: rows of a tensor, or items of a dataset collated."""
    if isinstance(data, Tensor):
        while True:
            for idx in torch.randperm(len(data), generator=generator).split(batch_size):
                if len(idx) == batch_size:
                    yield data[idx]
    else:
        loader = DataLoader(
            data, batch_size=batch_size, drop_last=True, sampler=RandomSampler(data, generator=generator)
        )
        while True:
            yield from loader


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
    learning rate linearly from 0. ``progress`` shows a tqdm bar (``TQDM_DISABLE=1`` hides it everywhere).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    ema = EMA(model, ema_decay(ema_halflife_images, batch_size)) if ema_halflife_images else None
    result = TrainResult()
    device = next(model.parameters()).device
    batches = infinite_batches(data, batch_size, generator)
    model.train()
    with progress_bar(range(steps), desc=desc, enabled=progress) as bar:
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
            loss = objective(model, _to(next(batches), device))["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(model)
            result.losses.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
    model.eval()
    result.ema = ema.model if ema is not None else None
    return result


def _to(batch: Tensor | list, device: torch.device) -> Tensor | tuple:
    if isinstance(batch, Tensor):
        return batch.to(device)
    return tuple(item.to(device) for item in batch)
