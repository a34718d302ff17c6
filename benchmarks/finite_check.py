"""Cost of checking every step's loss for NaN and inf (``train.finite_check_every=1``), on a digits step.

    python -m benchmarks.finite_check
    python -m benchmarks.finite_check --config cifar10/edm --device cuda --steps 20

Two measurements. The check alone: the Trainer's check of one step's loss (bring it back from the device,
average it over ranks, test it), timed over many calls. And end to end: the Trainer's steps with a check at
every step against a check only when a log line falls due, in alternating rounds, median of each.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import timeit

import torch

from benchmarks.sadm_step import seconds_per_step
from diffbook.experiments import Experiment
from diffbook.objectives import DenoisingLoss
from diffbook.train import Trainer


def check_seconds(device: torch.device, calls: int = 20_000) -> float:
    """Seconds of one call of the Trainer's finite check on one step's loss, as the training loop makes it."""
    experiment = Experiment.load("toy/edm", ["train.steps=1"])
    trainer = Trainer(experiment.build_model().to(device), DenoisingLoss(), torch.zeros(256, 2), experiment.train, None)
    loss = torch.ones(1, device=device)
    return timeit.timeit(lambda: trainer._checked_losses([loss], first_step=0), number=calls) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits/edm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    every_step, at_log_lines = (
        Experiment.load(args.config, [f"train.finite_check_every={every}"]) for every in (1, 10**9)
    )
    times: dict[str, list[float]] = {"every step": [], "at log lines": []}
    for _ in range(args.rounds):
        for name, experiment in (("every step", every_step), ("at log lines", at_log_lines)):
            times[name].append(seconds_per_step(experiment, lambda model: DenoisingLoss(), args.steps, 2, device))
    step = {name: statistics.median(values) for name, values in times.items()}
    check = check_seconds(device)
    machine = platform.processor() or platform.machine()
    print(f"{args.config}, batch {every_step.train.batch_size}, {device} ({machine}), torch {torch.__version__}")
    print("| measure | value |\n|---|---|")
    rounds = f"median of {args.rounds} rounds of {args.steps}"
    print(f"| step, checked at log lines only ({rounds}) | {1e3 * step['at log lines']:.1f} ms |")
    print(f"| step, checked every step | {1e3 * step['every step']:.1f} ms |")
    print(f"| end to end: every step / at log lines | {step['every step'] / step['at log lines']:.3f} |")
    print(f"| the check alone, per step | {1e6 * check:.1f} us |")
    print(f"| the check alone / a step | {check / step['at log lines']:.3%} |")


if __name__ == "__main__":
    main()
