"""The players a run optimises: the model on its objective and, for a two-player objective, the adversary.

Each player is a set of parameters with its own AdamW optimizer and gradient scaler, stepped on the loss that
a module's forward pass returns. That module is what DistributedDataParallel wraps: the objective applied to the
model (:class:`ObjectiveModule`), or the adversary's loss (:class:`AdversaryModule`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from diffbook.objectives.registry import Objective
from diffbook.train.config import TrainConfig


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


@runtime_checkable
class StatefulObjective(Protocol):
    """An objective with state of its own (a curriculum's step count), which a checkpoint keeps."""

    def __call__(self, model: nn.Module, batch: Tensor | tuple) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Player:
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
def frozen(module: nn.Module) -> Iterator[None]:
    """``module`` without gradients and in eval mode for the duration; its flags and mode are restored after."""
    flags, training = [p.requires_grad for p in module.parameters()], module.training
    module.requires_grad_(False).eval()
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        module.train(training)


class AdversaryModule(nn.Module):
    """``loss(batch)``, the adversary's loss, as the forward pass of a module whose only parameters are the
    adversary's: DDP averages their gradients, and the model that the loss calls is not part of this module."""

    def __init__(self, adversary: nn.Module, loss: Callable[[Tensor | tuple], dict[str, Tensor]]) -> None:
        super().__init__()
        self.adversary = adversary
        self.loss = loss

    def forward(self, batch: Tensor | tuple) -> dict[str, Tensor]:
        return self.loss(batch)


class ObjectiveModule(nn.Module):
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
