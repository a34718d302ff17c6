"""Cost of an SADM training step (the encoder's step, then the denoiser's) against a denoising step, on any device.

    python -m benchmarks.sadm_step --config toy/sadm
    python -m benchmarks.sadm_step --config digits/sadm data.resolution=8 network.overrides.resolution=8
    python -m benchmarks.sadm_step --config cifar10/sadm --device cuda --steps 50

Both objectives train the same freshly built network with the Trainer, on random data of the config's shape
and batch size, for ``--warmup`` untimed and then ``--steps`` timed steps each (the first Trainer's warm-up is
repeated for the second, so both are timed warm). SADM's step adds the encoder's step (a denoiser forward pass
without autograd, two encoder passes and their backward) and two encoder passes to the denoiser's step; the
structure itself is O(B^2) in the batch (spec §6, pitfalls 3 and 5).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch

from benchmarks.perf import synchronize
from benchmarks.perf.timing import print_step_costs
from diffbook.experiments import Experiment
from diffbook.objectives import DenoisingLoss
from diffbook.train import Trainer


def seconds_per_step(experiment: Experiment, objective_of, steps: int, warmup: int, device: torch.device) -> float:
    """Mean wall-clock seconds of the Trainer's steps ``warmup + 1 .. warmup + steps``."""
    config = dataclasses.replace(experiment.train)
    data = torch.randn(config.batch_size * 4, *experiment.sample_shape).clamp(-3, 3)
    times = []
    for count in (warmup, warmup + steps):
        torch.manual_seed(0)
        model = experiment.build_model().to(device)
        config.steps, config.log_every, config.checkpoint_every = count, count, count
        start = time.perf_counter()
        Trainer(model, objective_of(model), data.to(device), config, None, progress=False).fit()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="toy/sadm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()

    device = torch.device(args.device)
    experiment = Experiment.load(args.config, [*args.overrides, "network.init_from=null"])
    builders = {"denoising": lambda model: DenoisingLoss(), "sadm": experiment.build_objective}
    ms = {
        name: 1000 * seconds_per_step(experiment, make, args.steps, args.warmup, device)
        for name, make in builders.items()
    }
    machine = platform.processor() or platform.machine()
    description = f"{args.config}, batch {experiment.train.batch_size}, {device} ({machine})"
    print_step_costs(description, args.steps, ms)


if __name__ == "__main__":
    main()
