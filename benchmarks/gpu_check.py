"""What only a GPU shows, in one command of a few minutes: a training step of every full-scale config, sampling
throughput of the latent ImageNet models, and ``peers.py`` on the device; a dated section of RESULTS.md.

    make gpu-check                                   # one GPU, into benchmarks/RESULTS.md
    python -m benchmarks.gpu_check --device cuda --results benchmarks/RESULTS.md --budget-seconds 420
    python -m benchmarks.gpu_check --device cpu --smoke --results /tmp/RESULTS.md     # every path, in seconds

The machine has no internet, no datasets and no released weights, so every network has random weights and every
batch is synthetic, of the config's shapes (pixels in [-1, 1], or latents, with labels or captions' token ids).

1. Steps. For every config of :data:`FULL_SCALE`, the package's run as ``python -m diffbook train`` builds it
   (``Experiment.load``, ``initial_model``, ``build_objective``, the ``Trainer``) and two of the Trainer's own
   steps: the first warms up (kernel selection, ``torch.compile`` where ``train.compile`` asks), the second is
   timed; both losses pass the Trainer's NaN check. The batch is one GPU's share, ``train.batch_size / 8``: every
   full-scale config's global batch is written for one node of 8 GPUs, and none says otherwise. Precision and
   compilation are the config's. ``network.init_from`` is dropped (the same architecture, random weights), and
   Stable Diffusion's folder is written with random weights in SD 2.1-base's layout
   (:mod:`benchmarks.perf.random_weights`). Per config: seconds per step, peak memory (CUDA's allocator, from
   before the model is built: weights, optimizer state, EMA and activations), images/s, and pass or the error.
2. Sampling. DiT-XL/2 and the latent DiffiT-XL/2 (``imagenet256/dit``, ``imagenet256/diffit``), random weights
   saved as a Trainer checkpoint, through ``sample_to_dir`` (``python -m diffbook sample``'s path: guided DDPM
   as the configs sample, labels drawn by seed, a randomly initialised SD VAE decoding to PNGs) at batch 64. The
   configs' 250 steps take minutes per batch in fp32, so one batch is sampled at :data:`SAMPLE_STEPS` steps
   after a one-step warm-up; the fit ``t = a + b * steps`` gives images/s at 250 steps, ``a`` holding the model's
   loading and the VAE's decoding of the batch, which a 50k-image run pays once and once per batch.
3. ``peers.py --device cuda``, at fewer rounds, in a subprocess stopped when the budget is spent.

``--budget-seconds`` bounds the whole: the parts end at :data:`PART_ENDS` of it (time a part leaves unused goes
to the next), a step or a sampling run starts only before its part's end, and what remains is listed as skipped.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from benchmarks.perf import PeakMemory, describe_device, synchronize
from benchmarks.perf.random_weights import write_random_stable_diffusion, write_random_vae
from benchmarks.perf.results import write_marked_section
from diffbook.config import available_configs
from diffbook.data.captions import CAPTION_DATA, load_tokenizer, tokenize
from diffbook.experiments import Experiment
from diffbook.experiments.report import markdown_table
from diffbook.experiments.sampling import SampleRequest, Shard, labels_by_seed, sample_to_dir
from diffbook.profiles import seed_everything
from diffbook.train import Trainer, save_checkpoint

FULL_SCALE = ("cifar10", "ffhq64", "imagenet64", "imagenet256", "imagenet512", "flowers102", "oxford-pets", "sd21")
NODE_GPUS = 8
SMOKE_CONFIGS = ("imagenet256/sadm", "sd21/mse")  # latents, labels, a second player, init_from; captions, bf16
SAMPLING_CONFIGS = ("imagenet256/dit", "imagenet256/diffit")
SAMPLE_BATCH, SAMPLE_STEPS = 64, (10, 30)
SMOKE_SAMPLE_BATCH, SMOKE_SAMPLE_STEPS = 4, (1, 4)
PART_ENDS = {"steps": 0.5, "sampling": 0.75, "peers": 1.0}
PEERS_ROUNDS = 3
SMOKE_BATCH = 2
# Networks of each kind small enough for a CPU; the latents stay 4 channels, the pixels 3, at 8 x 8.
SMOKE_NETWORKS: dict[str, dict[str, object]] = {
    "unet": {
        "model_channels": 16,
        "channel_mult": [1, 2],
        "num_blocks": 1,
        "attn_resolutions": [4],
        "channels_per_head": None,
        "resolution": 8,
    },
    "diffit_unet": {
        "channels": [32, 32],
        "num_blocks": [1, 1],
        "window": 4,
        "head_dim": 16,
        "noise_dim": 16,
        "time_dim": 32,
        "resolution": 8,
    },
    "adm": {
        "model_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [4],
        "channels_per_head": 32,
        "resolution": 8,
    },
    "diffit": {"depth": 2, "dim": 64, "num_heads": 2, "resolution": 8},
    "dit": {"depth": 2, "dim": 64, "num_heads": 2, "resolution": 8},
    "stable_diffusion": {"resolution": 8},
}
VAE_FACTOR = 8  # Stable Diffusion's VAE, and its tiny twin: pixels are 8x the latents' side


@dataclass
class Budget:
    """Seconds for the whole check, from now; part ``p`` ends at ``PART_ENDS[p]`` of them."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self, part: str) -> float:
        return self.seconds * PART_ENDS[part] - self.elapsed()


@dataclass
class StepResult:
    """One config's step: ``status`` is ``pass``, ``fail`` (with ``error``) or ``skipped`` (with the reason)."""

    config: str
    batch: int
    precision: str
    compile: bool
    weights: str
    status: str
    error: str = ""
    seconds: float = math.nan
    peak_gib: float = math.nan

    def cells(self) -> list[str]:
        ran = self.status == "pass"
        result = {"pass": "pass", "fail": f"**fail**: {self.error}", "skipped": f"skipped: {self.error}"}
        return [
            self.config,
            str(self.batch),
            self.precision,
            "yes" if self.compile else "no",
            self.weights,
            f"{self.seconds:.3g}" if ran else "",
            f"{self.batch / self.seconds:.4g}" if ran else "",
            f"{self.peak_gib:.3g}" if ran else "",
            result[self.status],
        ]


STEP_COLUMNS = (
    "config",
    "per-GPU batch",
    "precision",
    "compile",
    "weights",
    "s/step",
    "images/s",
    "peak GiB",
    "result",
)
SAMPLE_COLUMNS = ("model", "parameters", "sampler", "steps", "images", "s", "images/s", "result")


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, short enough for a table cell."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ").replace("|", "/")
    return (text[:200] + " ...") if len(text) > 200 else text


def quiet_hub_libraries() -> None:
    """Hide diffusers' and transformers' progress bars and advice, which every load of a folder prints."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


def free(device: torch.device) -> None:
    """Give back what the last part allocated, so that the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# Part 1: a training step of every config


def per_gpu_batch(experiment: Experiment) -> int:
    """One GPU's share of the config's global ``train.batch_size``, written for a node of :data:`NODE_GPUS`."""
    return max(1, experiment.train.batch_size // NODE_GPUS)


def step_overrides(base: Experiment, batch: int, smoke: bool, sd_folder: Path) -> tuple[list[str], str]:
    """The overrides that make ``base`` run here (its batch, weights that exist, in-memory data), and what its
    weights are, in words."""
    overrides = [f"train.batch_size={batch}", "train.num_workers=0"]  # the batch is in memory: no loader workers
    weights = "random"
    if base.network.init_from is not None:
        overrides.append("network.init_from=null")
        weights = "random, in place of init_from"
    if base.network.kind == "stable_diffusion":
        overrides.append(f"network.weights={sd_folder}")
        if base.network.overrides.get("unet") is not None:
            overrides.append(f"network.overrides.unet={sd_folder / 'unet'}")
        weights = "random, tiny SD layout" if smoke else "random, SD 2.1-base layout"
    if smoke:
        tiny = SMOKE_NETWORKS[base.network.kind]
        overrides += [f"network.overrides.{key}={json.dumps(value)}" for key, value in tiny.items()]
        if hasattr(base.data, "resolution"):
            factor = VAE_FACTOR if base.data.name == CAPTION_DATA else 1
            overrides.append(f"data.resolution={factor * int(tiny['resolution'])}")  # type: ignore[call-overload]
    return overrides, weights


def synthetic_dataset(experiment: Experiment, count: int) -> Tensor | Dataset:
    """``count`` random items of the shapes ``experiment.build_dataset()`` gives: samples ``(C, R, R)`` (pixels
    in [-1, 1] or latents), with class labels for a class-conditional network; for captioned images, pixels
    ``(3, R, R)`` and the token ids ``(L,)`` of a caption, from the weights' tokenizer."""
    generator = torch.Generator().manual_seed(0)
    if experiment.data.name == CAPTION_DATA:
        side = experiment.data.resolution  # type: ignore[union-attr]
        pixels = torch.rand(count, 3, side, side, generator=generator) * 2 - 1
        tokenizer = load_tokenizer(Path(str(experiment.network.weights)) / "tokenizer")
        return TensorDataset(pixels, tokenize(tokenizer, ["a photograph of a red bus"] * count))
    x = torch.randn(count, *experiment.sample_shape, generator=generator)
    if not experiment.is_latent:
        x = x.clamp(-1, 1)
    if experiment.num_classes:
        return TensorDataset(x, torch.randint(0, experiment.num_classes, (count,), generator=generator))
    return x


def time_step(experiment: Experiment, device: torch.device) -> tuple[float, float]:
    """Seconds of the Trainer's second step and the peak memory in GiB from before the model was built."""
    memory = PeakMemory(device)
    seed_everything(experiment.train.seed)
    model = experiment.initial_model().to(device)
    objective = experiment.build_objective(model)
    dataset = synthetic_dataset(experiment, experiment.train.batch_size)
    trainer = Trainer(model, objective, dataset, experiment.train, None, progress=False)
    batch = next(iter(trainer.batches))
    seconds = []
    for step in range(2):
        start = time.perf_counter()
        loss = trainer._train_step(batch, step)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        trainer._checked_losses([loss], first_step=step)
    return seconds[-1], memory.peak() / 1024


def check_steps(
    configs: Sequence[str], device: torch.device, smoke: bool, budget: Budget, scratch: Path
) -> list[StepResult]:
    """One :class:`StepResult` per config, each printed as it is measured."""
    results, sd_folder = [], scratch / "sd21"
    for name in configs:
        base = Experiment.load(name)
        batch = SMOKE_BATCH if smoke else per_gpu_batch(base)
        overrides, weights = step_overrides(base, batch, smoke, sd_folder)
        result = StepResult(name, batch, base.train.precision, base.train.compile, weights, "skipped")
        if budget.left("steps") <= 0:
            result.error = f"the steps' share of the budget ({PART_ENDS['steps']:.0%}) was spent"
        else:
            try:
                if base.network.kind == "stable_diffusion" and not sd_folder.exists():
                    write_random_stable_diffusion(sd_folder, tiny=smoke)  # once, for every sd21 config
                result.seconds, result.peak_gib = time_step(Experiment.load(name, overrides), device)
                result.status = "pass"
            except Exception as error:  # any failure is this config's result, and the check goes on
                result.status, result.error = "fail", one_line(error)
        free(device)
        results.append(result)
        print("| " + " | ".join(result.cells()) + " |", flush=True)
    return results


# Part 2: sampling throughput through sample_to_dir


@dataclass
class SampleResult:
    model: str
    parameters: int
    sampler: str
    steps: int
    images: int
    status: str
    error: str = ""
    seconds: float = math.nan
    estimated: bool = False

    def cells(self) -> list[str]:
        ran = self.status == "pass"
        result = {"pass": "estimated: a + b x steps" if self.estimated else "pass"}
        result |= {"fail": f"**fail**: {self.error}", "skipped": f"skipped: {self.error}"}
        return [
            self.model,
            f"{self.parameters / 1e6:.1f} M",
            self.sampler,
            str(self.steps),
            str(self.images),
            f"{self.seconds:.3g}" if ran else "",
            f"{self.images / self.seconds:.4g}" if ran else "",
            result[self.status],
        ]


def sampling_experiment(name: str, smoke: bool, steps: int | None = None) -> Experiment:
    """The config ``name`` (with a tiny network of its kind for ``smoke``), sampled with ``steps`` steps."""
    experiment = Experiment.load(name)
    tiny = SMOKE_NETWORKS[experiment.network.kind] if smoke else {}
    overrides = [f"network.overrides.{key}={json.dumps(value)}" for key, value in tiny.items()]
    return experiment.with_overrides(overrides + ([f"sample.steps={steps}"] if steps else []))


def check_sampling(
    name: str, device: torch.device, smoke: bool, budget: Budget, scratch: Path, vae: Path
) -> list[SampleResult]:
    """Rows of ``name``'s sampling at each of the step counts, then the estimate at the config's own. The random
    checkpoint is written to ``scratch``, and the VAE to ``vae`` unless it is there."""
    experiment = sampling_experiment(name, smoke)
    with torch.device("meta"):  # counted without computing: the weights are made only if there is time
        parameters = sum(p.numel() for p in experiment.build_model().parameters())
    batch, counts = (SMOKE_SAMPLE_BATCH, SMOKE_SAMPLE_STEPS) if smoke else (SAMPLE_BATCH, SAMPLE_STEPS)
    seeds = list(range(batch))
    request = SampleRequest(seeds, batch, labels_by_seed(seeds, experiment.num_classes), str(device), str(vae))
    sampler = f"{experiment.sampler.name}, cfg {experiment.config['sample'].get('cfg_scale')}"
    ckpt = scratch / f"{name.replace('/', '-')}.pt"
    rows = []
    for run, steps in enumerate((1, *counts)):  # the first run, of one step, warms up
        row = SampleResult(name, parameters, sampler, steps, batch, "skipped")
        if budget.left("sampling") <= 0:
            row.error = f"the sampling's share of the budget ({PART_ENDS['sampling']:.0%}) was spent"
            rows += [row] if run > 0 else []
            continue
        try:
            if not ckpt.exists():
                write_random_checkpoint(experiment, ckpt)
            if not vae.exists():
                write_random_vae(vae, tiny=smoke)
            start = time.perf_counter()
            out = scratch / f"{ckpt.stem}-{steps}"  # a fresh folder: nothing there to resume from
            sample_to_dir(ckpt, sampling_experiment(name, smoke, steps), out, request, Shard(), progress=False)
            synchronize(device)
            row.seconds, row.status = time.perf_counter() - start, "pass"
        except Exception as error:  # a failure is this run's result
            row.status, row.error = "fail", one_line(error)
        free(device)
        if run > 0:
            rows.append(row)
            print("| " + " | ".join(row.cells()) + " |", flush=True)
    rows += estimate_at_config_steps(rows, experiment.sampler.steps)
    ckpt.unlink(missing_ok=True)
    return rows


def write_random_checkpoint(experiment: Experiment, path: Path) -> None:
    """A Trainer checkpoint of ``experiment``'s model with freshly initialised weights and no EMA."""
    seed_everything(experiment.train.seed)
    save_checkpoint(
        {"step": 0, "model": experiment.build_model().state_dict(), "ema": None, **experiment.record()}, path
    )


def estimate_at_config_steps(rows: list[SampleResult], steps: int) -> list[SampleResult]:
    """The row at ``steps`` from the fit ``t = a + b * steps`` through the two measured rows; none without both,
    or when noise makes ``b`` negative."""
    if len(rows) != 2 or any(row.status != "pass" for row in rows):
        return []
    first, last = rows
    b = (last.seconds - first.seconds) / (last.steps - first.steps)
    if b <= 0:
        return []
    a = first.seconds - b * first.steps
    return [
        SampleResult(first.model, first.parameters, first.sampler, steps, first.images, "pass", "", a + b * steps, True)
    ]


# Part 3: peers.py on the device


def run_peers(device: torch.device, smoke: bool, seconds: float) -> str:
    """``peers.py``'s printed intro and table, stopped after ``seconds``; what it measured by then, and why not more."""
    options = ["--scale", "smoke", "--sections", "samplers", "--warmup", "0", "--rounds", "1"] if smoke else []
    command = [sys.executable, "-m", "benchmarks.peers", "--device", str(device)]
    command += options or ["--rounds", str(PEERS_ROUNDS)]
    shown = "python -m " + " ".join(command[2:])
    if seconds <= 0:
        return f"`{shown}`: skipped, the budget was spent."
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=seconds, check=False)
    except subprocess.TimeoutExpired as stopped:
        partial = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
        return f"`{shown}`: stopped at the budget after {seconds:.0f} s; the rows it had measured:\n\n{partial.strip()}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"`{shown}`: **failed** (exit {done.returncode}): {last}\n\n{done.stdout.strip()}"
    return f"`{shown}`:\n\n{done.stdout.strip()}"


# The section


def header(today: str, where: str, budget: Budget, smoke: bool) -> str:
    tf32 = torch.backends.cuda.matmul.allow_tf32
    software = ", ".join(f"{name} {version(name)}" for name in ("torch", "diffusers", "transformers"))
    mode = " Smoke run: tiny networks." if smoke else ""
    return (
        f"{today}, {where}; {software}; TF32 matrix products {'on' if tf32 else 'off'} (PyTorch's default: off). "
        f"Budget {budget.seconds:.0f} s.{mode}"
    )


def section(
    title: str, intro: str, steps: list[StepResult], samples: list[SampleResult], peers: str, used: float, smoke: bool
) -> str:
    parts = [f"## `gpu_check.py`: {title}", intro]
    if steps:
        parts += [
            "### One training step of every full-scale config",
            f"The Trainer's second step (the first warms up), one GPU's share of the global batch "
            f"({'smoke batch' if smoke else f'train.batch_size / {NODE_GPUS}'}), synthetic data of the config's "
            "shapes; peak memory is CUDA's allocator's from before the model was built.",
            markdown_table(STEP_COLUMNS, [result.cells() for result in steps]),
        ]
    if samples:
        parts += [
            "### Sampling through `sample_to_dir`",
            "One batch, random weights, labels drawn by seed, decoded by a randomly initialised SD VAE to PNGs; "
            "the time includes loading the checkpoint and the VAE. The row at the config's steps is estimated "
            "from the two above it.",
            markdown_table(SAMPLE_COLUMNS, [row.cells() for row in samples]),
        ]
    if peers:
        parts += ["### `peers.py` on this device", peers]
    parts.append(f"The check took {used:.0f} s.")
    return "\n\n".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="the whole check, in seconds")
    parser.add_argument("--smoke", action="store_true", help="tiny networks and few configs: every path, on a CPU")
    parser.add_argument("--configs", nargs="+", help="default: every full-scale config (two with --smoke)")
    parser.add_argument("--parts", nargs="+", choices=tuple(PART_ENDS), default=list(PART_ENDS))
    parser.add_argument("--results", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    full_scale = [name for name in available_configs() if name.split("/")[0] in FULL_SCALE]
    configs = args.configs or (list(SMOKE_CONFIGS) if args.smoke else full_scale)
    unknown = sorted(set(configs) - set(available_configs()))
    if unknown:
        parser.error(f"unknown configs {', '.join(unknown)}; the full-scale ones are {', '.join(full_scale)}")

    quiet_hub_libraries()
    device, budget = torch.device(args.device), Budget(args.budget_seconds)
    today, where = datetime.date.today().isoformat(), describe_device(device)
    intro = header(today, where, budget, args.smoke)
    title = f"{where.split(',')[0]}, {today}" + (" (smoke run)" if args.smoke else "")
    print(intro, flush=True)
    steps: list[StepResult] = []
    samples: list[SampleResult] = []
    peers = ""

    def write() -> None:  # after every part: a check cut short still leaves what it measured
        if args.results:
            text = section(title, intro, steps, samples, peers, budget.elapsed(), args.smoke)
            write_marked_section(args.results, f"gpu_check.py {title}", text)

    with tempfile.TemporaryDirectory(prefix="diffbook-gpu-check-") as scratch:
        if "steps" in args.parts:
            print("\n" + markdown_table(STEP_COLUMNS, []), flush=True)
            steps = check_steps(configs, device, args.smoke, budget, Path(scratch))
            write()
        if "sampling" in args.parts:
            vae = Path(scratch) / "vae"
            print("\n" + markdown_table(SAMPLE_COLUMNS, []), flush=True)
            for name in SAMPLING_CONFIGS:
                samples += check_sampling(name, device, args.smoke, budget, Path(scratch), vae)
            write()
    if "peers" in args.parts:
        free(device)
        peers = run_peers(device, args.smoke, budget.left("peers"))
        print("\n" + peers, flush=True)
        write()
    if args.results:
        print(f"\nWrote {args.results}")


if __name__ == "__main__":
    main()
