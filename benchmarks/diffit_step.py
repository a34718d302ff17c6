"""Forward FLOPs, forward+backward time and peak memory per image: DiffiT (image and latent) against DiT-XL/2.

    python -m benchmarks.diffit_step --device cpu --batch 1 --reps 2
    python -m benchmarks.diffit_step --device cuda --batch 32 --precision bf16

Each network is built from its shipped config (``cifar10/diffit``, ``imagenet256/diffit``, ``imagenet256/dit``)
exactly as ``python -m diffbook train`` builds it. FLOPs of one image's forward pass are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the meta device (no compute, the same on any machine); it counts
a multiply-add as 2 FLOPs, so DiT's and DiffiT's tables, which count multiply-adds (118.6 and 114 "GFLOPs"),
compare with half of it, printed as GMACs. A step is one forward and backward pass of ``mean(F^2)`` on random
inputs (no optimizer); its memory is the peak above the weights and gradients (activations and temporaries):
CUDA's allocator peak on a GPU, the process's resident-set peak on a CPU (reset through
``/proc/self/clear_refs``), each measured from before the first step, since allocators keep freed memory.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from benchmarks.perf import PeakMemory, count_flops, synchronize
from diffbook.experiments import Experiment
from diffbook.runtime.precision import AUTOCAST_DTYPES

CONFIGS = ("cifar10/diffit", "imagenet256/diffit", "imagenet256/dit")


def forward_flops(config: str) -> int:
    """FLOPs of one image's forward pass, counted on the meta device."""
    experiment = Experiment.load(config)
    with torch.device("meta"):
        net = experiment.network.build()
        x, t = torch.randn(1, *experiment.sample_shape), torch.ones(1)
        labels = torch.zeros(1, dtype=torch.long) if getattr(net, "num_classes", 0) else None
        return count_flops(lambda: net(x, t, labels))


def time_step(config: str, device: torch.device, batch: int, precision: str, warmup: int, reps: int) -> dict:
    """Seconds and peak extra memory per forward+backward step of ``batch`` random inputs."""
    experiment = Experiment.load(config)
    torch.manual_seed(0)
    net = experiment.network.build().to(device).train()
    x = torch.randn(batch, *experiment.sample_shape, device=device)
    t = torch.rand(batch, device=device) * (999 if experiment.config["process"]["kind"] == "ddpm" else 1)
    labels = torch.randint(0, net.num_classes, (batch,), device=device) if getattr(net, "num_classes", 0) else None
    dtype = AUTOCAST_DTYPES[precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = net(x, t, labels).float().square().mean()
        loss.backward()
        synchronize(device)

    memory = PeakMemory(device)
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    params = sum(p.numel() for p in net.parameters())
    gradients_mib = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    return {"params": params, "s_per_step": statistics.median(seconds), "peak_mib": memory.peak() - gradients_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", choices=tuple(AUTOCAST_DTYPES), default="fp32")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    print(
        f"{where}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, {args.precision}, "
        f"batch {args.batch}, {args.warmup} warm-up and {args.reps} timed steps (median)\n"
    )
    print("| config | parameters | forward GFLOPs / image | GMACs / image | s / step | ms / image | peak MiB / image |")
    print("|---|---|---|---|---|---|---|")
    for config in args.configs:
        flops = forward_flops(config)
        result = time_step(config, device, args.batch, args.precision, args.warmup, args.reps)
        print(
            f"| {config} | {result['params'] / 1e6:.1f} M | {flops / 1e9:.1f} | {flops / 2e9:.1f} | "
            f"{result['s_per_step']:.2f} | {1e3 * result['s_per_step'] / args.batch:.0f} | "
            f"{result['peak_mib'] / args.batch:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
