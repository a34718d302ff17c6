"""Wall-clock cost of a training step, objective against objective, on the same network and batch."""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from diffbook.perf.measure import synchronize
from diffbook.train.trainer import Objective


def time_training_steps(
    model: nn.Module,
    objectives: Mapping[str, Objective],
    batch: Tensor | tuple,
    steps: int = 20,
    warmup: int = 3,
    lr: float = 1e-5,
) -> dict[str, float]:
    """Seconds per optimizer step (forward, backward, Adam update) of each objective, by name.

    ``batch`` is what the objectives take (``x0: (B, ...)`` or ``(x0, labels)``), on the model's device. The
    objectives take turns, ``warmup`` untimed rounds and then ``steps`` timed ones, so that a change in the
    machine's load hits all of them alike. The model is trained in place (at a small ``lr``).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    model.train()
    seconds = dict.fromkeys(objectives, 0.0)
    for round_index in range(warmup + steps):
        for name, objective in objectives.items():
            elapsed = _one_step(model, objective, batch, optimizer, device)
            if round_index >= warmup:
                seconds[name] += elapsed
    return {name: total / steps for name, total in seconds.items()}


def print_step_costs(description: str, steps: int, milliseconds: dict[str, float]) -> None:
    """Print ``description`` with the device's threads, each objective's ms/step, and the ratio of the last
    objective's cost to the first's (the candidate against its baseline)."""
    print(f"{description}, {torch.get_num_threads()} threads, {steps} steps each")
    for name, value in milliseconds.items():
        print(f"  {name:16s} {value:8.1f} ms/step")
    first, *_, last = milliseconds.values()
    print(f"  {'ratio':16s} {last / first:8.2f}")


def _one_step(model: nn.Module, objective: Objective, batch, optimizer: torch.optim.Optimizer, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    loss = objective(model, batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    synchronize(device)  # CUDA runs asynchronously: wait for the step to finish before reading the clock
    return time.perf_counter() - start
