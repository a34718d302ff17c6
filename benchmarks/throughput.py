"""Training and sampling throughput of the chapter-1 models on whatever device runs this script.

    python -m benchmarks.throughput [--device cuda] [--repeats 5]

Prints one markdown table: training steps per second (forward, backward and Adam step on one batch) of the 2D
MLP and the digits U-Nets, and sampling throughput (samples per second, and network evaluations per second)
of EDM's Heun sampler. Each number is the median over ``--repeats`` timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.perf import synchronize
from diffbook.diffusion import DDPM, EDM, Denoiser, karras_sigmas
from diffbook.nets import TimeMLP, UNet, unet_preset
from diffbook.objectives import DenoisingLoss
from diffbook.samplers import edm_sample


def median_rate(work: Callable[[], None], count: int, repeats: int, device: torch.device) -> float:
    """Median of ``count / seconds`` over ``repeats`` timed calls of ``work``, after one warm-up call."""
    work()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        work()
        synchronize(device)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def training_rate(model: Denoiser, shape: tuple[int, ...], steps: int, repeats: int, device) -> float:
    """Training steps per second on a fixed batch of ``shape``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = torch.randn(shape, device=device)
    objective = DenoisingLoss()

    def run() -> None:
        for _ in range(steps):
            loss = objective(model, batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return median_rate(run, steps, repeats, device)


def sampling_rate(model: Denoiser, shape: tuple[int, ...], heun_steps: int, repeats: int, device) -> float:
    """Samples per second of EDM's Heun sampler with ``heun_steps`` steps (``2 * heun_steps - 1`` NFE)."""
    noise = torch.randn(shape, device=device)
    sigmas = karras_sigmas(heun_steps, model.process.sigma_min, model.process.sigma_max)
    model.eval()
    return median_rate(lambda: edm_sample(model, noise, sigmas), shape[0], repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    cases = [
        ("2D MLP (TimeMLP, DDPM eps)", Denoiser(TimeMLP(), DDPM()), (256, 2), 50),
        ("digits16 U-Net (EDM)", Denoiser(UNet(unet_preset("digits16")), EDM()), (64, 1, 16, 16), 5),
        ("digits32 U-Net (EDM)", Denoiser(UNet(unet_preset("digits32")), EDM()), (64, 1, 32, 32), 3),
    ]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print(f"device: {device} ({name}), torch {torch.__version__}, float32\n")
    print("| model | parameters | batch | train steps/s | train images/s | Heun-18 samples/s | batched NFE/s |")
    print("|---|---|---|---|---|---|---|")
    for label, model, shape, steps in cases:
        model.to(device)
        params = sum(p.numel() for p in model.parameters())
        train = training_rate(model, shape, steps, args.repeats, device)
        sample = sampling_rate(model, shape, 18, args.repeats, device)
        print(
            f"| {label} | {params / 1e6:.2f} M | {shape[0]} | {train:.1f} | {train * shape[0]:.0f} "
            f"| {sample:.1f} | {sample * 35 / shape[0]:.1f} |"
        )


if __name__ == "__main__":
    main()
