"""Guided DDPM sampling of a small latent DiT, batch 64 against batch 1: images/s, and whether the images agree.

    python -m benchmarks.guided_sampling --results benchmarks/RESULTS.md
    python -m benchmarks.guided_sampling --steps 25 --images 64 --rounds 3

The network is ``imagenet256/dit``'s kind (adaLN-Zero DiT, 1000 classes, learned variance) cut to
:data:`SMALL_DIT` (a few blocks on 4 x 8 x 8 latents) with random weights, and it is sampled as that config samples
(DDPM with the learned variance, guidance 1.5 on latent channels 0-2) with fewer steps, through the seeded loop of
``python -m diffbook sample`` (:func:`diffbook.samplers.generate`; labels drawn by seed, as ``--class-labels
random``): the same ``--images`` seeds at batch 1 and at batch ``--images``, in turns. Image ``k`` comes from seed
``k`` alone, so both give the same latents up to the order in which kernels sum; the script prints the largest
difference, relative to the largest latent. DiT zero-initialises its adaLN-Zero modulation and final layer, which
would make the network's output zero whatever its input; those weights get random values here, so that the
comparison sees the network's kernels.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.perf import describe_device, time_in_turns
from benchmarks.perf.results import write_marked_section
from diffbook.experiments import Experiment
from diffbook.experiments.report import markdown_table
from diffbook.experiments.sampling import labels_by_seed
from diffbook.samplers import generate

CONFIG = "imagenet256/dit"
SMALL_DIT = {"depth": 4, "dim": 256, "num_heads": 4, "resolution": 8}
# The largest difference, relative to the largest latent, that float32 rounding explains over a few dozen steps.
# (Random weights predict noise that does not match the sample, so the latents grow to hundreds.)
TOLERANCE = 1e-5


def small_dit(steps: int) -> Experiment:
    """``imagenet256/dit`` with the network of :data:`SMALL_DIT`, sampled in ``steps`` steps."""
    overrides = [f"network.overrides.{key}={json.dumps(value)}" for key, value in SMALL_DIT.items()]
    return Experiment.load(CONFIG, [*overrides, f"sample.steps={steps}"])


@torch.no_grad()
def randomize_zero_init(net: nn.Module, seed: int = 0) -> None:
    """Give every all-zero parameter (adaLN-Zero's modulation, the final layer, biases) values ``N(0, 0.02^2)``."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in net.parameters():
        if not parameter.any():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)


def sample(model: nn.Module, experiment: Experiment, seeds: list[int], batch_size: int) -> Tensor:
    """Latents ``(len(seeds), 4, 8, 8)`` of ``seeds``, ``batch_size`` at a time."""
    labels = labels_by_seed(seeds, experiment.num_classes)
    batches = generate(model, experiment.sampler, seeds, experiment.sample_shape, batch_size, labels)
    return torch.cat([samples for _, samples in batches])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--images", type=int, default=64, help="the seeds, and the large batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    experiment = small_dit(args.steps)
    torch.manual_seed(0)
    model = experiment.build_model().eval()
    randomize_zero_init(model)
    seeds = list(range(args.images))
    latents: dict[int, Tensor] = {}

    def run(batch_size: int) -> None:
        latents[batch_size] = sample(model, experiment, seeds, batch_size)

    with torch.no_grad():
        timing = time_in_turns(
            {f"batch {b}": lambda b=b: run(b) for b in (1, args.images)}, torch.device("cpu"), 1, args.rounds
        )
    scale = latents[1].abs().max().item()
    difference = (latents[1] - latents[args.images]).abs().max().item()
    same = difference <= TOLERANCE * scale
    parameters = sum(p.numel() for p in model.parameters())
    rows = [
        [name, f"{args.images / t.median:.2f}", f"{t.median:.2f}", f"{100 * t.spread:.0f} %"]
        for name, t in timing.items()
    ]
    speedup = timing["batch 1"].median / timing[f"batch {args.images}"].median
    table = markdown_table(("batch", "images/s", f"s for {args.images} images", "spread"), rows)
    cfg = experiment.config["sample"]
    intro = (
        f"{datetime.date.today().isoformat()}, this 2-core CPU ({describe_device(torch.device('cpu'))}), torch "
        f"{torch.__version__}, load average {load:.2f} at the start. `{CONFIG}`'s DiT cut to "
        f"{', '.join(f'{k} {v}' for k, v in SMALL_DIT.items())} ({parameters / 1e6:.1f} M parameters, random "
        f"weights, zero-initialised ones made random), sampled as the config samples (DDPM, learned variance, "
        f"guidance {cfg['cfg_scale']} on channels 0-{cfg['cfg_channels'] - 1}) in {args.steps} steps; "
        f"{args.images} seeds with labels drawn by seed, at batch 1 and at batch {args.images}, in turns: median of "
        f"{args.rounds} rounds after a warm-up."
    )
    verdict = "the same" if same else "**not** the same"
    outcome = (
        f"Batch {args.images} samples {speedup:.1f} times as many images per second as batch 1. The two give "
        f"{verdict} latents: the largest difference is {difference:.1e}, {difference / scale:.1e} of the largest "
        f"latent ({scale:.3g}; tolerance {TOLERANCE:g})."
    )
    command = "python -m benchmarks.guided_sampling --results benchmarks/RESULTS.md"
    text = "\n\n".join([intro, table, outcome, f"Regenerate: `{command}`."])
    print(text)
    if args.results:
        title = f"## `guided_sampling.py`: guided DDPM of a small latent DiT, batch {args.images} against batch 1"
        write_marked_section(args.results, "guided_sampling.py", f"{title}\n\n{text}")
        print(f"\nWrote {args.results}")


if __name__ == "__main__":
    main()
