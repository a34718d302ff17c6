"""One training loop for every objective, in one process or many under ``torchrun``, resumable bit for bit.

Each step draws this rank's share of the global batch, runs ``objective(model, batch)`` under the chosen
precision, and takes an AdamW step on gradients that DistributedDataParallel has averaged over ranks. A
two-player objective (:class:`TwoPlayerObjective`, e.g. SADM's structure discriminator) brings a second set of
parameters, which gets its own optimizer and its own steps before each of the model's. Losses
stay on the device between log lines; they are brought back, averaged over ranks and checked for NaN only at
the steps that write something (a log line, a checkpoint, a sample grid), so the GPU never waits on them.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from diffbook.profiles import seed_everything
from diffbook.runtime.distributed import all_gather_objects, all_reduce_mean, current_context, wrap_ddp
from diffbook.runtime.precision import AUTOCAST_DTYPES, autocast_dtype
from diffbook.runtime.progress import progress_bar
from diffbook.train.checkpoint import copy_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from diffbook.train.ema import EMA, ema_decay
from diffbook.data.grid import save_image_grid

Objective = Callable[..., dict[str, Tensor]]
SampleFn = Callable[[nn.Module, int], Tensor | None]


@runtime_checkable
class TwoPlayerObjective(Protocol):
    """An objective with a second player, an adversary of the model, which the Trainer optimises as well.

    ``adversary`` holds the second player's parameters; ``adversary_loss(model, batch)`` is the loss they
    minimise, computed without gradients into the model; ``adversary_lr`` is their AdamW learning rate (the
    config's betas, weight decay, warm-up, clipping and precision apply to both players), and
    ``adversary_steps`` the number of their steps before each of the model's. While the model steps, the
    adversary is frozen: no gradients reach it, and it is in eval mode.
    """

    adversary: nn.Module
    adversary_lr: float
    adversary_steps: int

    def __call__(self, model: nn.Module, batch: Tensor | tuple) -> dict[str, Tensor]: ...

    def adversary_loss(self, model: nn.Module, batch: Tensor | tuple) -> dict[str, Tensor]: ...


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
                self.precision in AUTOCAST_DTYPES,
                f"precision must be one of {list(AUTOCAST_DTYPES)}, got {self.precision!r}",
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
    """The loss of every step this run took (averaged over ranks), the adversary's loss at each step of a
    two-player objective (its last step's, when it takes several), and the EMA copy of the model if one was kept."""

    losses: list[float] = field(default_factory=list)
    adversary_losses: list[float] = field(default_factory=list)
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
    :func:`~diffbook.runtime.distributed.init_distributed` first and put the model on the context's device.

    ``run_dir`` receives ``checkpoint.pt``, ``log.jsonl`` and ``samples/step-{step:07d}.png``; :meth:`fit`
    resumes from ``checkpoint.pt`` when it exists. ``run_dir = None`` keeps nothing on disk.
    ``sample_fn(model, step) -> (N, C, H, W) in [-1, 1] | None`` is called on rank 0 with the EMA model (or
    the live one, in eval mode) every ``config.sample_every`` steps; returning None skips the grid.
    Under ``torchrun`` every rank builds the same Trainer (same config, same ``run_dir``); rank 0 alone writes.
    An objective with state of its own (a curriculum's step count) exposes ``state_dict()`` and
    ``load_state_dict(state)``; the checkpoint keeps that state, and a resumed run restores it. A
    :class:`TwoPlayerObjective`'s adversary is moved to the model's device, trained alongside, and kept in the
    checkpoint with its optimizer.
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
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        self.batches = EpochBatches(
            dataset,
            _per_rank_batch_size(config.batch_size, self.context.world_size),
            config.seed,
            self.context.rank,
            self.context.world_size,
            config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.player = _Player(model, self._wrap(_ObjectiveModule(model, objective)), config.lr, config)
        # After wrapping: DDP has broadcast rank 0's weights, and the average starts from those.
        self.ema = (
            EMA(model, ema_decay(config.ema_halflife_images, config.batch_size)) if config.ema_halflife_images else None
        )
        self.adversary: _Player | None = None
        if isinstance(objective, TwoPlayerObjective):
            if objective.adversary_steps < 1:
                raise ValueError(f"a two-player objective needs adversary_steps >= 1, got {objective.adversary_steps}")
            adversary = objective.adversary.to(self.device)
            module = self._wrap(_AdversaryModule(adversary, partial(objective.adversary_loss, model)))
            self.adversary = _Player(adversary, module, objective.adversary_lr, config)
        self.step = 0
        self.saved_step: int | None = None

    def _wrap(self, module: nn.Module) -> nn.Module:
        module = wrap_ddp(module, self.context)
        return torch.compile(module) if self.config.compile else module

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
                    result.losses += [row[0] for row in losses]
                    result.adversary_losses += [row[1] for row in losses if len(row) > 1]
                    log.add(losses)
                    self._report(log, bar)
        self.model.eval()
        result.ema = self.ema.model if self.ema is not None else None
        return result

    def _report(self, log: _RunLog, bar: tqdm) -> None:
        """Write what falls due at this step: a log line, a checkpoint, a sample grid."""
        cfg = self.config
        if self._due(cfg.log_every):
            record = log.write(self.step, self.player.optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_sec']:.0f}")
        if self._due(cfg.checkpoint_every) and self.run_dir is not None:
            self._save_checkpoint()
        if self._due(cfg.sample_every) and self.run_dir is not None and self.sample_fn is not None:
            self._save_samples()

    def _train_step(self, batch: Tensor | list, step: int) -> Tensor:
        """One step of each player, the adversary's first; returns their losses, ``(1,)`` or ``(2,)``, detached."""
        batch, warmup = _to_device(batch, self.device), self._warmup_factor(step)
        adversary_losses = []
        if self.adversary is not None:
            steps = range(self.objective.adversary_steps)
            adversary_losses = [self.adversary.step(batch, warmup, self._autocast) for _ in steps]
        with _frozen(self.adversary.owner) if self.adversary is not None else nullcontext():
            loss = self.player.step(batch, warmup, self._autocast)
        if self.ema is not None:
            self.ema.update(self.model)
        return torch.stack([loss, *adversary_losses[-1:]])

    def _autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def _warmup_factor(self, step: int) -> float:
        """The fraction of the learning rates in use: from ``1 / warmup_steps`` at step 0, linearly, to 1."""
        warmup = self.config.warmup_steps
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    def _checked_losses(self, pending: list[Tensor], first_step: int) -> list[list[float]]:
        # Averaged over ranks first, so that a NaN on any rank stops every rank at the same step.
        losses = all_reduce_mean(torch.stack(pending).float()).tolist()
        for offset, row in enumerate(losses):
            if not all(math.isfinite(loss) for loss in row):
                losses_now = f"{row[0]}" if len(row) == 1 else f"{row[0]} and the adversary's {row[1]}"
                raise FloatingPointError(
                    f"the loss became {losses_now} at step {first_step + offset}; {self._stop_advice()}"
                )
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
                **self.player.state_dict(),
                "adversary": self.adversary.state_dict(module=True) if self.adversary is not None else None,
                "objective": self.objective.state_dict() if hasattr(self.objective, "state_dict") else None,
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
        self.player.load_state_dict(state)
        if (state.get("adversary") is not None) != (self.adversary is not None):
            saved = "has" if state.get("adversary") is not None else "has no"
            raise ValueError(f"{self.checkpoint_path} {saved} adversary and this run's objective does not match it")
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"], module=True)
        if state.get("objective") is not None:
            self.objective.load_state_dict(state["objective"])
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


class _Player:
    """The parameters of ``owner``, stepped by AdamW on ``module(batch)["loss"]`` (``module`` may be DDP-wrapped).

    Each player has its own gradient scaler, since an fp16 scale suits one loss and not necessarily another.
    """

    def __init__(self, owner: nn.Module, module: nn.Module, lr: float, config: TrainConfig) -> None:
        self.owner, self.module, self.lr, self.grad_clip = owner, module, lr, config.grad_clip
        self.optimizer = torch.optim.AdamW(
            owner.parameters(), lr=lr, betas=config.betas, weight_decay=config.weight_decay
        )
        device = next(owner.parameters()).device
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    def step(self, batch: Tensor | tuple, warmup: float, autocast: Callable[[], AbstractContextManager]) -> Tensor:
        """One optimizer step at ``warmup * lr``; returns the loss, detached."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * warmup
        with autocast():
            loss = self.module(batch)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.owner.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def state_dict(self, module: bool = False) -> dict[str, Any]:
        """The optimizer's and the scaler's state, and with ``module`` the owner's weights."""
        state = {"optimizer": self.optimizer.state_dict(), "grad_scaler": self.scaler.state_dict()}
        return state | {"module": self.owner.state_dict()} if module else state

    def load_state_dict(self, state: dict[str, Any], module: bool = False) -> None:
        if module:
            self.owner.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["grad_scaler"])


@contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """``module`` without gradients and in eval mode for the duration; its flags and mode are restored after."""
    flags, training = [p.requires_grad for p in module.parameters()], module.training
    module.requires_grad_(False).eval()
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        module.train(training)


class _AdversaryModule(nn.Module):
    """``loss(batch)``, the adversary's loss, as the forward pass of a module whose only parameters are the
    adversary's: DDP averages their gradients, and the model that the loss calls is not part of this module."""

    def __init__(self, adversary: nn.Module, loss: Callable[[Tensor | tuple], dict[str, Tensor]]) -> None:
        super().__init__()
        self.adversary = adversary
        self.loss = loss

    def forward(self, batch: Tensor | tuple) -> dict[str, Tensor]:
        return self.loss(batch)


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
        self.losses: list[list[float]] = []
        self.start = self.last_time = time.perf_counter()
        self.last_step = step

    def add(self, losses: list[list[float]]) -> None:
        self.losses += losses

    def write(self, step: int, lr: float) -> dict[str, float]:
        """The line: ``loss`` (and ``adversary_loss`` for two players) is the mean since the last line."""
        now = time.perf_counter()
        means = [sum(column) / len(column) for column in zip(*self.losses, strict=True)]
        record = {
            "step": step,
            "loss": means[0],
            **({"adversary_loss": means[1]} if len(means) > 1 else {}),
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


def _to_device(batch: Tensor | list | tuple, device: torch.device) -> Tensor | tuple:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    return tuple(item.to(device, non_blocking=True) for item in batch)
