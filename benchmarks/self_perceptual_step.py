"""Cost of a self-perceptual training step against an MSE step on the same network, on any device.

    python -m benchmarks.self_perceptual_step --config digits/self_perceptual --device cpu --batch 64
    python -m benchmarks.self_perceptual_step --config cifar10/self_perceptual --device cuda --batch 128

A self-perceptual step runs the online network forward and backward, plus the frozen copy's encoder (down blocks
and middle block) twice forward, once without autograd, and once backward (spec §10). Both objectives train the
same freshly built network on random data of the config's shape; ``--warmup`` untimed steps, then ``--steps``
timed ones, alternating the two objectives so that both see the same machine load. Prints milliseconds per step
and the ratio.
"""

from __future__ import annotations

import argparse
import platform

import torch

from benchmarks.perf.timing import print_step_costs, time_training_steps
from diffbook.experiments import Experiment
from diffbook.objectives import DenoisingLoss, SelfPerceptualLoss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="digits/self_perceptual")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    device = torch.device(args.device)
    experiment = Experiment.load(args.config)
    torch.manual_seed(0)
    model = experiment.build_model().to(device)
    objectives = {"mse": DenoisingLoss(), "self_perceptual": SelfPerceptualLoss.from_model(model)}
    x0 = torch.randn(args.batch, *experiment.sample_shape, device=device).clamp(-1, 1)
    classes = experiment.num_classes
    batch = (x0, torch.randint(0, classes, (args.batch,), device=device)) if classes else x0
    seconds = time_training_steps(model, objectives, batch, args.steps, args.warmup)
    machine = platform.processor() or platform.machine()
    ms = {name: 1000 * value for name, value in seconds.items()}
    print_step_costs(f"{args.config}, batch {args.batch}, {device} ({machine})", args.steps, ms)


if __name__ == "__main__":
    main()
