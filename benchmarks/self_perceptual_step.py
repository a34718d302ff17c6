"""Cost of a self-perceptual training step against an MSE step on the same network, on any device.

    python benchmarks/self_perceptual_step.py --config digits/self_perceptual --device cpu --batch 64
    python benchmarks/self_perceptual_step.py --config cifar10/self_perceptual --device cuda --batch 128

A self-perceptual step runs the online network forward and backward, plus the frozen copy's encoder (down blocks
and middle block) twice forward, once without autograd, and once backward (spec §10). Both objectives train the
same freshly built network on random data of the config's shape; ``--warmup`` untimed steps, then ``--steps``
timed ones, alternating the two objectives so that both see the same machine load. Prints milliseconds per step
and the ratio.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from diffbook.config import build_model, load_config, num_classes, sample_shape
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
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    objectives = {"mse": DenoisingLoss(), "self_perceptual": SelfPerceptualLoss.from_model(model)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    x0 = torch.randn(args.batch, *sample_shape(cfg), device=device).clamp(-1, 1)
    batch = (x0, torch.randint(0, num_classes(cfg), (args.batch,), device=device)) if num_classes(cfg) else x0

    def step(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = objectives[name](model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(args.warmup):
        for name in objectives:
            step(name)
    seconds = {name: 0.0 for name in objectives}
    for _ in range(args.steps):
        for name in objectives:
            seconds[name] += step(name)
    ms = {name: 1000 * total / args.steps for name, total in seconds.items()}
    print(
        f"{args.config}, batch {args.batch}, {device} ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} threads, {args.steps} steps each"
    )
    for name, value in ms.items():
        print(f"  {name:16s} {value:8.1f} ms/step")
    print(f"  ratio            {ms['self_perceptual'] / ms['mse']:8.2f}")


if __name__ == "__main__":
    main()
