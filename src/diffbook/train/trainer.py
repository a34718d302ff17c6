"""One training loop for every objective, in one process or many under ``torchrun``, resumable bit for bit.

Each step draws this rank's share of the global batch, runs ``objective(model, batch)`` under the chosen
precision, and takes an AdamW step on gradients that DistributedDataParallel has averaged over ranks. Losses
stay on the device between log lines; they are brought back, averaged over ranks and checked for NaN only at
the steps that write something (a log line, a checkpoint, a sample grid), so the GPU never waits on them.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from diffbook.profiles import seed_everything
from diffbook.progress import progress_bar
from diffbook.train.checkpoint import copy_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from diffbook.train.distributed import all_gather_objects, all_reduce_mean, current_context, wrap_ddp
from diffbook.train.ema import EMA, ema_decay
from diffbook.viz import save_image_grid

Objective = Callable[..., dict[str, Tensor]]
SampleFn = Callable[[nn.Module, int], Tensor | None]

_AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """How long and how to train. ``batch_size`` is global: each of the ``W`` processes draws ``batch_size / W``.

    ``precision``: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient scaler; CUDA only).
    ``*_every`` count optimizer steps; ``sample_every = 0`` never samples. ``keep_checkpoints`` keeps a
    ``checkpoint-{step:07d}.pt`` snapshot beside the latest ``checkpoint.pt`` at every save.
    """

    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 0
    grad_clip: float | None = None
    ema_halflife_images: float | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: bool = False
    sample_every: int = 0
    num_workers: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives a list
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
                self.precision in _AUTOCAST_DTYPES,
                f"precision must be one of {list(_AUTOCAST_DTYPES)}, got {self.precision!r}",
            ),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.sample_every >= 0, f"sample_every must be >= 0 (0 = never), got {self.sample_every}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (
                len(self.betas) == 2 and all(0 <= beta < 1 for beta in self.betas),
                f"betas must be two numbers in [0, 1), got {self.betas}",
            ),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
        ]


@dataclass
class TrainResult:
    """The loss of every step this run took (averaged over ranks), and the EMA copy of the model if one was kept."""

    losses: list[float] = field(default_factory=list)
    ema: nn.Module | None = None

    def smoothed(self, window: int = 50) -> list[float]:
        """Running mean of the loss over ``window`` steps, for plots."""
        losses = torch.tensor(self.losses)
        kernel = torch.ones(min(window, len(losses))) / min(window, len(losses))
        return torch.nn.functional.conv1d(losses[None, None], kernel[None, None]).flatten().tolist()


@dataclass
class DataPosition:
    """Where the data stream stands: the epoch, and how many of this epoch's batches were already consumed."""

    epoch: int = 0
    batch: int = 0


class EpochBatches:
    """Endless per-rank batches of a tensor's rows or a dataset's items, reshuffled every epoch.

    A ``DistributedSampler`` orders each epoch from ``(seed, epoch)`` alone; with one replica it is a seeded
    random sampler. So the position is the whole state of the stream: a resumed run skips the consumed batches
    without loading them, and ``W`` ranks drawing ``B / W`` each see between them exactly the global batches
    that one process drawing ``B`` sees. Incomplete batches are dropped.
    """

    def __init__(
        self,
        data: Tensor | Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler = DistributedSampler(
            data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        if len(self.sampler) < batch_size:
            raise ValueError(f"{len(data)} samples over {world_size} process(es) make no batch of {batch_size} each")
        self.position = DataPosition()

    def __iter__(self) -> Iterator[Tensor | list]:
        while True:
            self.sampler.set_epoch(self.position.epoch)
            index_batches = list(BatchSampler(self.sampler, self.batch_size, drop_last=True))
            for batch in self._load(index_batches[self.position.batch :]):
                self.position.batch += 1
                yield batch
            self.position = DataPosition(epoch=self.position.epoch + 1)

    def _load(self, index_batches: list[list[int]]) -> Iterable[Tensor | list]:
        if isinstance(self.data, Tensor):
            return (self.data[torch.tensor(indices)] for indices in index_batches)
        # The loader draws its workers' base seed from its own generator, not from the global stream that a
        # resume restores, so starting a loader mid-epoch leaves the objective's noise as it would have been.
        generator = torch.Generator().manual_seed((self.seed + self.position.epoch) * self.world_size + self.rank)
        return DataLoader(
            self.data,
            batch_sampler=index_batches,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
        )


class Trainer:
    """Train ``model`` in place on ``objective(model, batch) -> {"loss": scalar, ...}`` over ``dataset``.

    ``dataset``: a tensor of samples ``(N, ...)`` or a dataset of items (e.g. ``(image, label)`` pairs).
    The model trains on the device its parameters are on; under ``torchrun`` call
    :func:`~diffbook.train.distributed.init_distributed` first and put the model on the context's device.

    ``run_dir`` receives ``checkpoint.pt``, ``log.jsonl`` and ``samples/step-{step:07d}.png``; :meth:`fit`
    resumes from ``checkpoint.pt`` when it exists. ``run_dir = None`` keeps nothing on disk.
    ``sample_fn(model, step) -> (N, C, H, W) in [-1, 1] | None`` is called on rank 0 with the EMA model (or
    the live one, in eval mode) every ``config.sample_every`` steps; returning None skips the grid.
    Under ``torchrun`` every rank builds the same Trainer (same config, same ``run_dir``); rank 0 alone writes.
    An objective with state of its own (a curriculum's step count) exposes ``state_dict()`` and
    ``load_state_dict(state)``; the checkpoint keeps that state, and a resumed run restores it.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        dataset: Tensor | Dataset,
        config: TrainConfig,
        run_dir: str | Path | None,
        sample_fn: SampleFn | None = None,
        *,
        progress: bool = True,
        desc: str = "train",
    ) -> None:
        self.model, self.objective, self.config, self.sample_fn = model, objective, config, sample_fn
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress, self.desc = progress, desc
        self.device = next(model.parameters()).device
        self.context = current_context(self.device)
        self.autocast_dtype = _autocast_dtype(config.precision, self.device)
        self.batches = EpochBatches(
            dataset,
            _per_rank_batch_size(config.batch_size, self.context.world_size),
            config.seed,
            self.context.rank,
            self.context.world_size,
            config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.module = wrap_ddp(_ObjectiveModule(model, objective), self.context)
        if config.compile:
            self.module = torch.compile(self.module)
        # After wrapping: DDP has broadcast rank 0's weights, and the average starts from those.
        self.ema = (
            EMA(model, ema_decay(config.ema_halflife_images, config.batch_size)) if config.ema_halflife_images else None
        )
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.step = 0
        self.saved_step: int | None = None

    @property
    def checkpoint_path(self) -> Path | None:
        """``run_dir/checkpoint.pt``: the latest checkpoint, the one a new Trainer resumes from."""
        return self.run_dir / "checkpoint.pt" if self.run_dir is not None else None

    @property
    def log_path(self) -> Path | None:
        """``run_dir/log.jsonl``: one JSON line every ``log_every`` steps, written by rank 0."""
        return self.run_dir / "log.jsonl" if self.run_dir is not None else None

    def fit(self) -> TrainResult:
        """Train until ``config.steps`` steps are done, from the checkpoint in ``run_dir`` if there is one."""
        cfg = self.config
        if self.run_dir is not None and self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self._resume():
            self._seed_rank()
        result = TrainResult()
        log = _RunLog(self.log_path if self.context.is_main else None, self.step, cfg.batch_size)
        pending: list[Tensor] = []
        batches = iter(self.batches)
        self.model.train()
        bar = progress_bar(
            range(self.step, cfg.steps),
            desc=self.desc,
            enabled=self.progress and self.context.is_main,
            initial=self.step,
            total=cfg.steps,
        )
        with bar:
            for step in bar:
                pending.append(self._train_step(next(batches), step))
                self.step = step + 1
                # Decided by the config alone: every rank must reach the collectives below at the same steps.
                if any(self._due(every) for every in (cfg.log_every, cfg.checkpoint_every, cfg.sample_every)):
                    losses = self._checked_losses(pending, first_step=self.step - len(pending))
                    pending = []
                    result.losses += losses
                    log.add(losses)
                    self._report(log, bar)
        self.model.eval()
        result.ema = self.ema.model if self.ema is not None else None
        return result

    def _report(self, log: _RunLog, bar: tqdm) -> None:
        """Write what falls due at this step: a log line, a checkpoint, a sample grid."""
        cfg = self.config
        if self._due(cfg.log_every):
            record = log.write(self.step, self.optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_sec']:.0f}")
        if self._due(cfg.checkpoint_every) and self.run_dir is not None:
            self._save_checkpoint()
        if self._due(cfg.sample_every) and self.run_dir is not None and self.sample_fn is not None:
            self._save_samples()

    def _train_step(self, batch: Tensor | list, step: int) -> Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(step)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            loss = self.module(_to_device(batch, self.device))["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def _lr(self, step: int) -> float:
        """The learning rate, ramped linearly from ``lr / warmup_steps`` at step 0 to ``lr``."""
        warmup = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / warmup) if warmup else self.config.lr

    def _checked_losses(self, pending: list[Tensor], first_step: int) -> list[float]:
        # Averaged over ranks first, so that a NaN on any rank stops every rank at the same step.
        losses = all_reduce_mean(torch.stack(pending).float()).tolist()
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss} at step {first_step + offset}; {self._stop_advice()}")
        return losses

    def _stop_advice(self) -> str:
        if self.saved_step is None:
            return "lower the learning rate (or clip gradients) and train again"
        return (
            f"the last good checkpoint, {self.checkpoint_path}, holds the first {self.saved_step} steps: "
            "lower the learning rate (or clip gradients) and resume from it"
        )

    def _due(self, every: int) -> bool:
        """Whether the step just taken ends an interval of ``every`` steps (0: never), or ends the run."""
        return every > 0 and (self.step % every == 0 or self.step == self.config.steps)

    def _save_checkpoint(self) -> None:
        # Every rank draws its own noise, so every rank's random state goes into rank 0's file.
        rng_states = all_gather_objects(rng_state())
        if self.context.is_main:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.model.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "objective": self.objective.state_dict() if hasattr(self.objective, "state_dict") else None,
                "grad_scaler": self.scaler.state_dict(),
                "data": asdict(self.batches.position),
                "rng": rng_states,
                "train_config": asdict(self.config),
            }
            save_checkpoint(state, self.checkpoint_path)
            if self.config.keep_checkpoints:
                copy_checkpoint(self.checkpoint_path, self.run_dir / f"checkpoint-{self.step:07d}.pt")
        self.saved_step = self.step

    def _resume(self) -> bool:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("objective") is not None:
            self.objective.load_state_dict(state["objective"])
        self.scaler.load_state_dict(state["grad_scaler"])
        self.batches.position = DataPosition(**state["data"])
        self.step = self.saved_step = state["step"]
        self._restore_rng(state["rng"])
        if self.context.is_main:
            _drop_log_lines_after(self.log_path, self.step)
        return True

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        if len(states) == self.context.world_size:
            set_rng_state(states[self.context.rank])
            return
        warnings.warn(
            f"the checkpoint holds the random states of {len(states)} process(es) and this run has "
            f"{self.context.world_size}: each rank is reseeded, so the noise differs from an uninterrupted run",
            stacklevel=3,
        )
        self._seed_rank()

    def _seed_rank(self) -> None:
        # A seed per rank and per starting step: ranks draw different noise, and a reseeded resume does not
        # replay the noise of the steps already taken.
        world_size = self.context.world_size
        seed_everything(self.config.seed + self.context.rank + self.step * world_size)

    @torch.no_grad()
    def _save_samples(self) -> None:
        if not self.context.is_main:
            return
        model = self.ema.model if self.ema is not None else self.model
        model.eval()
        images = self.sample_fn(model, self.step)
        self.model.train()
        if images is not None:
            save_image_grid(images, self.run_dir / "samples" / f"step-{self.step:07d}.png")


class _ObjectiveModule(nn.Module):
    """``objective(model, batch)`` as the forward pass of one module.

    DDP averages the gradients of what runs through its ``forward``, and objectives call other methods of the
    model (``model.raw``, ``model.process``); wrapping the objective keeps all of it inside DDP's forward, and
    lets ``torch.compile`` see the loss as well as the network.
    """

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Tensor | tuple) -> dict[str, Tensor]:
        return self.objective(self.model, batch)


class _RunLog:
    """Mean loss and throughput since the last line of ``log.jsonl`` (``path = None``: compute, write nothing)."""

    def __init__(self, path: Path | None, step: int, images_per_step: int) -> None:
        self.path, self.images_per_step = path, images_per_step
        self.losses: list[float] = []
        self.start = self.last_time = time.perf_counter()
        self.last_step = step

    def add(self, losses: list[float]) -> None:
        self.losses += losses

    def write(self, step: int, lr: float) -> dict[str, float]:
        now = time.perf_counter()
        record = {
            "step": step,
            "loss": sum(self.losses) / len(self.losses),
            "lr": lr,
            "images_per_sec": self.images_per_step * (step - self.last_step) / max(now - self.last_time, 1e-9),
            "seconds": now - self.start,
        }
        if self.path is not None:
            with open(self.path, "a") as file:
                file.write(json.dumps(record) + "\n")
        self.losses, self.last_time, self.last_step = [], now, step
        return record


def _drop_log_lines_after(path: Path | None, step: int) -> None:
    # Lines logged after the checkpoint describe steps the resumed run takes again.
    if path is None or not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if _logged_step(line) <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _logged_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except json.JSONDecodeError:
        return math.inf  # the half-written last line of a killed run


def _per_rank_batch_size(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ValueError(f"the global batch_size {batch_size} must be divisible by the {world_size} processes")
    return batch_size // world_size


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs CUDA (the model is on {device}); use 'bf16' or 'fp32'")
    return _AUTOCAST_DTYPES[precision]


def _to_device(batch: Tensor | list | tuple, device: torch.device) -> Tensor | tuple:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    return tuple(item.to(device, non_blocking=True) for item in batch)
