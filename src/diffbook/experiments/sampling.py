"""Sampling a checkpoint to files, reproducible image by image: what ``python -m diffbook sample`` runs.

Image ``k`` comes from seed ``k`` alone (:mod:`diffbook.samplers.seeded`), whatever the batch size or the number
of processes. Under ``torchrun`` (``RANK``, ``WORLD_SIZE``) rank ``r`` takes ``seeds[r::world]``, writes its images
as ``{seed:06d}.png`` into the shared directory and its arrays to ``samples-rank{r}-of-{world}.npz``, which
:func:`merge_shards` then joins into the one ``samples.npz`` that ADM's evaluator reads. A seed whose PNG is
already there is not sampled again, so a stopped 50k-image run, started again with the same command, resumes
where it stopped (and gives the same images as one that never stopped); ``sampling.json`` records what else
decides the images, and a run with other settings refuses that directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffbook.data.captions import CAPTION_DATA
from diffbook.data.pixels import png_path, read_png, to_uint8, write_pngs
from diffbook.experiments.experiment import Experiment
from diffbook.runtime.progress import progress_bar
from diffbook.samplers import generate


def parse_int_ranges(text: str, what: str = "seeds") -> list[int]:
    """``"0-3,10"`` -> ``[0, 1, 2, 3, 10]``: comma-separated non-negative integers and inclusive ranges."""
    values: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ValueError(f"bad {what} {text!r}: expected integers and ranges such as '0-49999' or '0,5,7'")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise ValueError(f"bad {what} {text!r}: the range {part.strip()!r} runs backwards")
        values.extend(range(first, last + 1))
    if len(set(values)) != len(values):
        raise ValueError(f"bad {what} {text!r}: a value appears twice")
    return values


SAMPLES_NPZ = "samples.npz"


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` sampling processes, from torchrun's environment."""

    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls) -> Shard:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def take(self, seeds: Sequence[int]) -> list[int]:
        return list(seeds[self.rank :: self.world])

    @property
    def npz_name(self) -> str:
        return SAMPLES_NPZ if self.world == 1 else f"samples-rank{self.rank}-of-{self.world}.npz"


def preview_fn(experiment: Experiment, count: int = 64) -> Callable[[nn.Module, int], Tensor | None] | None:
    """The Trainer's ``sample_fn(model, step) -> (count, C, H, W)``: seeds ``0..count-1``, so that previews at
    different steps show the same noise; None for toy points, which make no image grid."""
    shape = experiment.sample_shape
    if len(shape) != 3:
        return None

    def sample(model: nn.Module, step: int) -> Tensor | None:
        device = next(model.parameters()).device
        batches = generate(model, experiment.sampler, range(count), shape, count, None, device)
        return torch.cat([images for _, images in batches])

    return sample


@dataclass(frozen=True)
class SampleRequest:
    """What to sample: ``seeds``, ``batch_size`` images at a time, ``class_labels`` or, for a text-to-image
    model, ``prompts``, cycled by seed (seed ``s`` gets the ``s % K``-th; None: unconditional), on ``device``. A
    latent model's samples are decoded by ``vae`` (default: its weights' VAE, else Stable Diffusion's)."""

    seeds: Sequence[int]
    batch_size: int = 256
    class_labels: Sequence[int] | None = None
    device: str = "cpu"
    vae: str | None = None
    prompts: Sequence[str] | None = None


def sample_to_dir(
    ckpt: str | Path,
    experiment: Experiment,
    out_dir: str | Path,
    request: SampleRequest,
    shard: Shard | None = None,
    progress: bool = True,
) -> Path:
    """Sample this shard's seeds from a checkpoint of ``experiment`` into ``out_dir``; returns the ``.npz`` path.

    Images go to ``{seed:06d}.png`` and to the npz in the layout of ADM's evaluator: ``arr_0: (N, H, W, C)``
    uint8, ``arr_1: (N,)`` their class labels (class-conditional models), and ``seeds: (N,)``. Seeds whose PNG
    ``out_dir`` holds are read back, not sampled. 2-D toy points go to the npz only, as ``samples: (N, 2)``
    float32, and are always sampled. A bar counts the images still to sample (on rank 0).
    """
    shard = shard or Shard.from_env()
    if request.class_labels is not None and not experiment.num_classes:
        raise ValueError("--class-labels given, but the model is unconditional (num_classes = 0)")
    conditions: Sequence[int] | Tensor | None = request.class_labels
    null = None
    if request.prompts:
        conditions, null = encode_prompts(experiment, request.prompts, request.device)
    elif experiment.data.name == CAPTION_DATA:
        raise ValueError("a text-to-image model samples from prompts: give --prompt")
    model = experiment.load_checkpoint(ckpt).to(request.device)
    decoder = _latent_decoder(experiment, request.vae, request.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_same_settings(out_dir, sampling_settings(experiment, request), write=shard.rank == 0)
    shape, my_seeds = experiment.sample_shape, shard.take(request.seeds)
    is_image = len(shape) == 3
    done = {seed for seed in my_seeds if png_path(out_dir, seed).is_file()} if is_image else set()
    todo = [seed for seed in my_seeds if seed not in done]
    if done and progress and shard.rank == 0:
        message = f"resuming: {len(done)} of this process's {len(my_seeds)} images are already in {out_dir}"
        print(message, file=sys.stderr)
    batches = generate(model, experiment.sampler, todo, shape, request.batch_size, conditions, request.device, null)
    bar = progress_bar(desc="sample", enabled=progress and shard.rank == 0, total=len(todo), unit="image")
    sampled: dict[int, np.ndarray] = {}
    for batch, samples in batches:
        bar.update(len(batch))
        if is_image:
            images = to_uint8(samples if decoder is None else decoder(samples))
            write_pngs(out_dir, batch, images)
        else:
            images = samples.float().cpu().numpy()
        sampled.update(zip(batch, images, strict=True))
    bar.close()
    arrays = np.stack([sampled[seed] if seed in sampled else read_png(out_dir, seed) for seed in my_seeds])
    labels = (
        None
        if request.class_labels is None
        else [request.class_labels[s % len(request.class_labels)] for s in my_seeds]
    )
    return _write_npz(out_dir / shard.npz_name, arrays, my_seeds, labels)


SETTINGS_FILE = "sampling.json"


def sampling_settings(experiment: Experiment, request: SampleRequest) -> dict:
    """What decides image ``k`` besides its seed: the run's resolved config, the labels or prompts, the VAE."""
    labels = None if request.class_labels is None else list(request.class_labels)
    digest = hashlib.sha256(json.dumps(labels).encode()).hexdigest()
    return {"config": experiment.config, "class_labels_sha256": digest, "prompts": request.prompts, "vae": request.vae}


def check_same_settings(out_dir: Path, settings: dict, write: bool) -> None:
    """Refuse to resume into ``out_dir`` if its images were made with other ``settings``, so that one folder
    never mixes two models or two label draws; ``write``: record ``settings`` there."""
    path = out_dir / SETTINGS_FILE
    settings = json.loads(json.dumps(settings))  # as the file would hold it: tuples become lists
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise ValueError(
            f"{out_dir} holds samples made with other settings (config, labels, prompts or VAE; see {path}): "
            "give another --out, or empty it"
        )
    if write:
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(settings, indent=1) + "\n")
        os.replace(partial, path)


def merge_shards(out_dir: str | Path, seeds: Sequence[int], world: int) -> Path:
    """Join the ``world`` ranks' ``samples-rank*-of-{world}.npz`` in ``out_dir`` into ``samples.npz``, rows in
    the order of ``seeds``, and remove them; run by one process once every rank has written its file."""
    out_dir = Path(out_dir)
    paths = [out_dir / Shard(rank, world).npz_name for rank in range(world)]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot merge the samples: {', '.join(missing)} not in {out_dir}")
    shards = [dict(np.load(path)) for path in paths]
    merged = {key: np.concatenate([shard[key] for shard in shards]) for key in shards[0]}
    position = {seed: i for i, seed in enumerate(seeds)}
    order = np.argsort([position[int(seed)] for seed in merged["seeds"]], kind="stable")
    np.savez(out_dir / SAMPLES_NPZ, **{key: value[order] for key, value in merged.items()})  # type: ignore[arg-type]
    for path in paths:
        path.unlink()
    return out_dir / SAMPLES_NPZ


def _write_npz(path: Path, samples: np.ndarray, seeds: Sequence[int], labels: Sequence[int] | None) -> Path:
    arrays = {"arr_0" if samples.ndim == 4 else "samples": samples, "seeds": np.asarray(seeds, dtype=np.int64)}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels, dtype=np.int64)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as its allow_pickle
    return path


# Labels draw from their own stream of the seed, apart from the noise, which torch draws from the seed itself.
LABEL_STREAM = 1


def labels_by_seed(seeds: Sequence[int], num_classes: int) -> list[int]:
    """Uniform random class labels, drawn from each seed alone, as the releases sample theirs (not cycled), and
    the same whatever the batch size or number of processes. Entry ``s`` is seed ``s``'s label, so the list
    plays the role of ``class_labels`` (seed ``s`` gets entry ``s % len``)."""
    if num_classes < 1:
        raise ValueError("--class-labels random given, but the model is unconditional (num_classes = 0)")
    return [int(np.random.default_rng([seed, LABEL_STREAM]).integers(num_classes)) for seed in range(max(seeds) + 1)]


def _latent_decoder(experiment: Experiment, vae: str | None, device: str) -> Callable[[Tensor], Tensor] | None:
    """Latents ``(B, 4, h, w)`` -> images ``(B, 3, 8h, 8w)`` for a latent model; None for the others."""
    if not experiment.is_latent:
        if vae is not None:
            raise ValueError("a VAE was given, but the model samples pixels, not latents")
        return None
    from diffbook.nets.vae import SD_VAE, decode, load_vae

    weights = experiment.network.weights
    autoencoder = load_vae(vae or (f"{weights}/vae" if weights else SD_VAE), device=device)
    return lambda latents: decode(autoencoder, latents)


@torch.no_grad()
def encode_prompts(experiment: Experiment, prompts: Sequence[str], device: str) -> tuple[Tensor, Tensor]:
    """The text encoder's hidden states of ``prompts``, ``(K, L, D)``, and of the empty prompt, ``(1, L, D)``
    (guidance's unconditional branch), from a text-to-image experiment's weights."""
    if experiment.data.name != CAPTION_DATA:
        raise ValueError("--prompt given, but the model is not text-conditioned (data.name is not image_captions)")
    from diffbook.data.captions import load_tokenizer, tokenize
    from diffbook.objectives.latent_text import load_text_encoder

    text_encoder = load_text_encoder(experiment.network.weights)
    tokenizer = load_tokenizer(f"{experiment.network.weights}/tokenizer")
    text_encoder = text_encoder.to(device)
    texts = text_encoder(tokenize(tokenizer, list(prompts)).to(device))[0]
    return texts, text_encoder(tokenize(tokenizer, [""]).to(device))[0]
