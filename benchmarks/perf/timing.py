"""Wall-clock cost of a training step, objective against objective, on the same network and batch."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from functools import partial

import torch
from torch import Tensor, nn

from benchmarks.perf.measure import time_in_turns
from diffbook.objectives.registry import Objective


def time_training_steps(
    model: nn.Module,
    objectives: Mapping[str, Objective],
    batch: Tensor | tuple,
    steps: int = 20,
    warmup: int = 3,
    lr: float = 1e-5,
) -> dict[str, float]:
    """Mean seconds per optimizer step (forward, backward, Adam update) of each objective, by name.

    ``batch`` is what the objectives take (``x0: (B, ...)`` or ``(x0, labels)``), on the model's device. The
    objectives take turns (:func:`~benchmarks.perf.measure.time_in_turns`), ``warmup`` untimed rounds and then
    ``steps`` timed ones, so that a change in the machine's load hits all of them alike. The model is trained in
    place (at a small ``lr``).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    model.train()

    def step(objective: Objective) -> None:
        loss = objective(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    steps_by_name = {name: partial(step, objective) for name, objective in objectives.items()}
    timings = time_in_turns(steps_by_name, device, warmup, steps)
    return {name: statistics.fmean(timing.seconds) for name, timing in timings.items()}


def print_step_costs(description: str, steps: int, milliseconds: dict[str, float]) -> None:
    """Print ``description`` with the device's threads, each objective's ms/step, and the ratio of the last
    objective's cost to the first's (the candidate against its baseline)."""
    print(f"{description}, {torch.get_num_threads()} threads, {steps} steps each")
    for name, value in milliseconds.items():
        print(f"  {name:16s} {value:8.1f} ms/step")
    first, *_, last = milliseconds.values()
    print(f"  {'ratio':16s} {last / first:8.2f}")
