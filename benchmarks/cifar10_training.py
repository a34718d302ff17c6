"""Training throughput and peak memory of a full-scale CIFAR-10 config, on any device.

    python -m benchmarks.cifar10_training --config cifar10/edm --device cpu --batch 8
    python -m benchmarks.cifar10_training --config cifar10/edm --device cuda --batch 512 --precision bf16

Builds the network, process and objective exactly as ``python -m diffbook train --config ...`` does (random
data of the right shape, so no dataset is needed), runs ``--warmup`` untimed and ``--steps`` timed optimizer
steps, and prints images per second and peak memory: CUDA's allocator peak on a GPU, the process's peak
resident set size on a CPU (which includes the interpreter and torch itself).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch

from benchmarks.perf import synchronize
from diffbook.experiments import Experiment
from diffbook.runtime.precision import AUTOCAST_DTYPES


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cifar10/edm")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=tuple(AUTOCAST_DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    device = torch.device(args.device)
    experiment = Experiment.load(args.config)
    torch.manual_seed(0)
    model = experiment.build_model().to(device).train()
    objective = experiment.build_objective(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=experiment.train.lr)
    resolution = experiment.sample_shape[-1]
    batch = torch.randn(args.batch, 3, resolution, resolution, device=device).clamp(-1, 1)
    dtype = AUTOCAST_DTYPES[args.precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = objective(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    params = sum(p.numel() for p in model.parameters())
    print(
        f"config {args.config} ({params / 1e6:.1f} M parameters), device {device} ({name}), "
        f"{torch.get_num_threads()} threads, {args.precision}, torch {torch.__version__}"
    )
    print("| config | batch | precision | s/step | images/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.config} | {args.batch} | {args.precision} | {seconds:.2f} | {args.batch / seconds:.1f} "
        f"| {peak_memory_mib(device):.0f} |"
    )


if __name__ == "__main__":
    main()
