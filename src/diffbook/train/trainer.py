"""One training loop for every objective, in one process or many under ``torchrun``, resumable bit for bit.

Each step draws this rank's share of the global batch (:mod:`~diffbook.train.batches`), runs
``objective(model, batch)`` under the chosen precision, and takes an AdamW step on gradients that
DistributedDataParallel has averaged over ranks (:mod:`~diffbook.train.players`). A two-player objective
(:class:`~diffbook.train.players.TwoPlayerObjective`, e.g. SADM's structure discriminator) brings a second set of
parameters, which gets its own optimizer and its own steps before each of the model's. Losses stay on the device
for ``finite_check_every`` steps; then they are brought back, averaged over ranks and checked for NaN, and always
before anything is written (a log line, a checkpoint, a sample grid), so no checkpoint ever holds non-finite weights.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from diffbook.data.grid import save_image_grid
from diffbook.profiles import seed_everything
from diffbook.runtime.distributed import all_gather_objects, all_reduce_mean, current_context, wrap_ddp
from diffbook.runtime.files import load_weights
from diffbook.runtime.precision import autocast_dtype
from diffbook.runtime.progress import progress_bar
from diffbook.train.batches import DataPosition, EpochBatches, per_rank_batch_size, to_device
from diffbook.train.checkpoint import (
    CheckpointError,
    copy_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from diffbook.train.config import TrainConfig
from diffbook.train.ema import EMA, ema_decay
from diffbook.train.players import (
    AdversaryModule,
    Objective,
    ObjectiveModule,
    Player,
    StatefulObjective,
    TwoPlayerObjective,
    frozen,
)
from diffbook.train.run_log import RunLog, drop_log_lines_after

SampleFn = Callable[[nn.Module, int], Tensor | None]


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


class Trainer:
    """Train ``model`` in place on ``objective(model, batch) -> {"loss": scalar, ...}`` over ``dataset``.

    ``dataset``: a tensor of samples ``(N, ...)`` or a dataset of items (e.g. ``(image, label)`` pairs).
    The model trains on the device its parameters are on; under ``torchrun`` call
    :func:`~diffbook.runtime.distributed.init_distributed` first and put the model on the context's device.

    ``run_dir`` receives ``checkpoint.pt``, ``log.jsonl`` and ``samples/step-{step:07d}.png``; :meth:`fit`
    resumes from ``checkpoint.pt`` when it exists. ``run_dir = None`` keeps nothing on disk.
    ``sample_fn(model, step) -> (N, C, H, W) in [-1, 1] | None`` is called on rank 0 with the EMA model (or
    the live one, in eval mode) every ``config.sample_every`` steps; returning None skips the grid.
    ``record`` holds entries written into every checkpoint beside the training state: the run's resolved config
    (``config``), so that a checkpoint alone says what model it holds and how it was trained, and the licence its
    weights inherit (``licence``).
    Under ``torchrun`` every rank builds the same Trainer (same config, same ``run_dir``); rank 0 alone writes.
    An objective with state of its own (a curriculum's step count) exposes ``state_dict()`` and
    ``load_state_dict(state)`` (:class:`~diffbook.train.players.StatefulObjective`); the checkpoint keeps that
    state, and a resumed run restores it. A :class:`~diffbook.train.players.TwoPlayerObjective`'s adversary is
    moved to the model's device, trained alongside, and kept in the checkpoint with its optimizer.
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
        record: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.objective, self.config, self.sample_fn = model, objective, config, sample_fn
        self.record = record or {}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress, self.desc = progress, desc
        self.device = next(model.parameters()).device
        self.context = current_context(self.device)
        self.autocast_dtype = autocast_dtype(config.precision, self.device)
        self.batches = EpochBatches(
            dataset,
            per_rank_batch_size(config.batch_size, self.context.world_size),
            config.seed,
            self.context.rank,
            self.context.world_size,
            config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self.player = Player(model, self._wrap(ObjectiveModule(model, objective)), config.lr, config)
        # After wrapping: DDP has broadcast rank 0's weights, and the average starts from those.
        self.ema = (
            EMA(model, ema_decay(config.ema_halflife_images, config.batch_size)) if config.ema_halflife_images else None
        )
        self.adversary: Player | None = None
        self.adversary_steps = 0
        if isinstance(objective, TwoPlayerObjective):
            if objective.adversary_steps < 1:
                raise ValueError(f"a two-player objective needs adversary_steps >= 1, got {objective.adversary_steps}")
            adversary = objective.adversary.to(self.device)
            module = self._wrap(AdversaryModule(adversary, partial(objective.adversary_loss, model)))
            self.adversary = Player(adversary, module, objective.adversary_lr, config)
            self.adversary_steps = objective.adversary_steps
        self.step = 0
        self.saved_step: int | None = None
        self.resumed_seconds = 0.0

    def _wrap(self, module: nn.Module) -> nn.Module:
        module = wrap_ddp(module, self.context)
        # torch.compile of a module returns an OptimizedModule, a module; its stubs declare a callable.
        return cast(nn.Module, torch.compile(module)) if self.config.compile else module

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
        if self._resume():
            self._announce(f"{self.desc}: resuming from step {self.step} of {cfg.steps}")
        else:
            self._seed_rank()
        result = TrainResult()
        log = RunLog(self.log_path if self.context.is_main else None, self.step, cfg.batch_size, self.resumed_seconds)
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
                reporting = any(self._due(every) for every in (cfg.log_every, cfg.checkpoint_every, cfg.sample_every))
                if reporting or self.step % cfg.finite_check_every == 0:
                    losses = self._checked_losses(pending, first_step=self.step - len(pending))
                    pending = []
                    result.losses += [row[0] for row in losses]
                    result.adversary_losses += [row[1] for row in losses if len(row) > 1]
                    log.add(losses)
                if reporting:
                    self._report(log, bar)
        self.model.eval()
        result.ema = self.ema.model if self.ema is not None else None
        return result

    def _announce(self, message: str) -> None:
        if self.progress and self.context.is_main:
            print(message, file=sys.stderr)

    def _report(self, log: RunLog, bar: tqdm) -> None:
        """Write what falls due at this step: a log line, a checkpoint, a sample grid."""
        cfg = self.config
        if self._due(cfg.log_every):
            record = log.write(self.step, self.player.optimizer.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_sec']:.0f}")
        if self._due(cfg.checkpoint_every) and self.checkpoint_path is not None:
            self._save_checkpoint(self.checkpoint_path, log.seconds())
        if self._due(cfg.sample_every) and self.run_dir is not None and self.sample_fn is not None:
            self._save_samples(self.run_dir, self.sample_fn)

    def _train_step(self, batch: Tensor | list, step: int) -> Tensor:
        """One step of each player, the adversary's first; returns their losses, ``(1,)`` or ``(2,)``, detached."""
        on_device, warmup = to_device(batch, self.device), self._warmup_factor(step)
        adversary_losses = []
        if self.adversary is not None:
            steps = range(self.adversary_steps)
            adversary_losses = [self.adversary.step(on_device, warmup, self._autocast) for _ in steps]
        with frozen(self.adversary.owner) if self.adversary is not None else nullcontext():
            loss = self.player.step(on_device, warmup, self._autocast)
        if self.ema is not None:
            self.ema.update(self.model, self._ema_decay(step))
        return torch.stack([loss, *adversary_losses[-1:]])

    def _ema_decay(self, step: int) -> float | None:
        """The decay of step ``step`` under a ramp-up (it grows with the images seen); None: the constant one."""
        cfg = self.config
        if cfg.ema_rampup_ratio is None or cfg.ema_halflife_images is None:
            return None
        return ema_decay(cfg.ema_halflife_images, cfg.batch_size, step * cfg.batch_size, cfg.ema_rampup_ratio)

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

    def _save_checkpoint(self, path: Path, seconds: float) -> None:
        # Every rank draws its own noise, so every rank's random state goes into rank 0's file.
        rng_states = all_gather_objects(rng_state())
        if self.context.is_main:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.model.state_dict() if self.ema is not None else None,
                **self.player.state_dict(),
                "adversary": self.adversary.state_dict(module=True) if self.adversary is not None else None,
                "objective": self.objective.state_dict() if isinstance(self.objective, StatefulObjective) else None,
                "data": asdict(self.batches.position),
                "rng": rng_states,
                "train_config": asdict(self.config),
                "seconds": seconds,
                **self.record,
            }
            save_checkpoint(state, path)
            if self.config.keep_checkpoints:
                copy_checkpoint(path, path.with_name(f"checkpoint-{self.step:07d}.pt"))
        self.saved_step = self.step

    def _resume(self) -> bool:
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return False
        state = load_checkpoint(self.checkpoint_path)
        load_weights(self.model, state["model"], self.checkpoint_path)
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(f"{self.checkpoint_path} has no EMA weights and this run keeps an EMA")
            load_weights(self.ema.model, state["ema"], self.checkpoint_path)
        self.player.load_state_dict(state)
        if (state.get("adversary") is not None) != (self.adversary is not None):
            saved = "has" if state.get("adversary") is not None else "has no"
            raise ValueError(f"{self.checkpoint_path} {saved} adversary and this run's objective does not match it")
        if self.adversary is not None:
            self.adversary.load_state_dict(state["adversary"], module=True)
        if state.get("objective") is not None:
            if not isinstance(self.objective, StatefulObjective):
                raise ValueError(f"{self.checkpoint_path} has objective state and this run's objective takes none")
            self.objective.load_state_dict(state["objective"])
        self.batches.position = DataPosition(**state["data"])
        self.step = self.saved_step = state["step"]
        self.resumed_seconds = state.get("seconds", 0.0)
        self._restore_rng(state["rng"])
        if self.context.is_main:
            drop_log_lines_after(self.log_path, self.step)
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
    def _save_samples(self, run_dir: Path, sample_fn: SampleFn) -> None:
        if not self.context.is_main:
            return
        model = self.ema.model if self.ema is not None else self.model
        model.eval()
        images = sample_fn(model, self.step)
        self.model.train()
        if images is not None:
            save_image_grid(images, run_dir / "samples" / f"step-{self.step:07d}.png")
