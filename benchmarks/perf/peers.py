"""The tools people would use instead of the package, configured to do the same work: the peers of the benchmarks.

- networks: diffusers' ``UNet2DModel`` laid out as a package :class:`~diffbook.nets.UNet` (:func:`diffusers_unet`)
  and diffusers' ``DiTTransformer2DModel`` sized as a package :class:`~diffbook.nets.DiT` (:func:`diffusers_dit`),
  both called through the package's interface by :class:`PeerNetwork`;
- samplers: diffusers' DDIM, EDM-Euler and Heun schedulers (:func:`diffusers_scheduler`) in the loop every diffusers
  pipeline runs (:func:`run_scheduler`);
- data: torchvision's CIFAR-10 with the usual training transforms (:func:`torchvision_cifar10`);
- evaluation: clean-fid's folder-to-folder FID with a custom feature network (:func:`cleanfid_folder_fid`).

diffusers and clean-fid are imported where they are used: they belong to the ``dev`` and ``metrics`` extras.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from diffbook.diffusion import DDPM, EDM
from diffbook.nets.dit import DiTConfig
from diffbook.nets.unet import UNetConfig


class PeerNetwork(nn.Module):
    """A diffusers model called as a package network, ``net(x, noise_labels, class_labels=None) -> (B, C, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.model(x, noise_labels, class_labels=class_labels, return_dict=False)[0]


def unet_differences(config: UNetConfig) -> list[str]:
    """What diffusers' ``UNet2DModel`` cannot express of ``config``, in words; empty when it builds the same network."""
    differences = []
    if config.decoder_attn == "last":
        differences.append("diffusers attends after every decoder block of an attention level, not only the last")
    if config.skip_scale != 1:
        differences.append(f"diffusers has no residual scale ({config.skip_scale:.3f} here)")
    if config.channel_mult[0] != 1:
        differences.append(
            f"diffusers' input conv gives {config.model_channels * config.channel_mult[0]} channels, not "
            f"{config.model_channels}, so its noise embedding and first block are wider and narrower"
        )
    if config.embedding == "fourier":
        differences.append("diffusers' Fourier embedding is twice as wide")
    if config.num_classes:
        differences.append("diffusers adds the class embedding after the noise MLP, at 4x the width")
    if min(config.model_channels * m for m in config.channel_mult) < 128:
        differences.append("diffusers uses 32 groups in every GroupNorm, the package at least 4 channels per group")
    return differences


def diffusers_unet(config: UNetConfig) -> nn.Module:
    """diffusers' ``UNet2DModel`` with the levels, blocks, attention resolutions, heads, resampling, noise embedding
    and dropout of ``config``; :func:`unet_differences` lists what it cannot match. Wrapped as a package network."""
    from diffusers import UNet2DModel

    if config.two_times:
        raise ValueError("diffusers' UNet2DModel takes one noise label per example; two_times has no peer")
    attends = [res in config.attn_resolutions for res in config.level_resolutions]
    resblock = config.resample == "resblock"
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if resblock else ("DownBlock2D", "UpBlock2D")
    )
    model = UNet2DModel(
        sample_size=config.resolution,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        block_out_channels=tuple(config.model_channels * m for m in config.channel_mult),
        layers_per_block=config.num_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else plain_down for a in attends),
        up_block_types=tuple("AttnUpBlock2D" if a else plain_up for a in reversed(attends)),
        downsample_type="resnet" if resblock else "conv",
        upsample_type="resnet" if resblock else "conv",
        time_embedding_type="fourier" if config.embedding == "fourier" else "positional",
        time_embedding_dim=4 * config.model_channels,
        flip_sin_to_cos=False,  # sines first, and frequencies down to exactly 1/10000 (freq_shift=1): DDPM's
        freq_shift=1,
        attention_head_dim=config.channels_per_head,  # None: one head, as in DDPM and EDM
        norm_eps=1e-6,
        dropout=config.dropout,
        resnet_time_scale_shift="scale_shift" if config.adaptive_scale else "default",
        num_class_embeds=config.num_classes + 1 if config.num_classes else None,
    )
    return PeerNetwork(model)


def dit_embedder_parameters(config: DiTConfig) -> int:
    """Parameters of one DiT time-and-label embedder (two linear layers and the label table with its null row).

    diffusers' DiT gives each of its ``depth`` blocks its own copy, where DiT shares one: the two differ by exactly
    ``(depth - 1)`` of these.
    """
    freq, dim = config.freq_dim, config.dim
    labels = (config.num_classes + 1) * dim if config.num_classes else 0
    return freq * dim + dim + dim * dim + dim + labels


def diffusers_dit(config: DiTConfig) -> nn.Module:
    """diffusers' ``DiTTransformer2DModel`` with the depth, width, heads, patch size, latent size, classes and output
    channels of ``config``, wrapped as a package network."""
    from diffusers import DiTTransformer2DModel

    if not config.num_classes:
        raise ValueError("diffusers' DiT is class-conditional; give the config num_classes > 0")
    model = DiTTransformer2DModel(
        num_attention_heads=config.num_heads,
        attention_head_dim=config.dim // config.num_heads,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_layers=config.depth,
        sample_size=config.resolution,
        patch_size=config.patch_size,
        num_embeds_ada_norm=config.num_classes,
        norm_eps=1e-6,
    )
    return PeerNetwork(model)


# Samplers


SCHEDULERS = ("ddim", "edm-euler", "heun")


def diffusers_scheduler(kind: str, process: DDPM | EDM):
    """diffusers' scheduler that samples ``process`` as the package's sampler of the same name does.

    ``"ddim"`` (a DDPM process): ``DDIMScheduler``, DDIM's "leading" spacing, ``alpha_bar_prev = 1`` at the last
    step, no clipping, as ``ddim_sample(..., spacing="leading")`` (diffusers always steps from ``t`` to
    ``t - T / steps``, which is the next step of that spacing only). ``"edm-euler"`` (an EDM process):
    ``EDMEulerScheduler`` on the Karras levels, as ``edm_sample(..., solver="euler")``. ``"heun"`` (a DDPM
    process): ``HeunDiscreteScheduler`` with Karras levels, Karras et al.'s Algorithm 1 on the process's noise
    levels, as ``edm_sample`` with Heun.
    """
    from diffusers import DDIMScheduler, EDMEulerScheduler, HeunDiscreteScheduler

    if kind == "edm-euler":
        if not isinstance(process, EDM):
            raise ValueError("the EDM-Euler scheduler needs an EDM process")
        return EDMEulerScheduler(
            sigma_min=process.sigma_min, sigma_max=process.sigma_max, sigma_data=process.sigma_data
        )
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {kind!r}")
    if not isinstance(process, DDPM) or process.prediction != "eps" or process.zero_terminal_snr:
        raise ValueError(f"the {kind} scheduler needs an epsilon-predicting DDPM process")
    betas = process.betas.float().numpy()
    if kind == "ddim":
        return DDIMScheduler(
            num_train_timesteps=process.T,
            trained_betas=betas,
            clip_sample=False,
            set_alpha_to_one=True,
            timestep_spacing="leading",
        )
    return HeunDiscreteScheduler(num_train_timesteps=process.T, trained_betas=betas, use_karras_sigmas=True)


@torch.no_grad()
def run_scheduler(scheduler, net: nn.Module, noise: Tensor, steps: int, class_labels: Tensor | None = None) -> Tensor:
    """The sampling loop of diffusers' pipelines: ``noise: (B, ...)`` standard normal -> samples ``(B, ...)``.

    ``net(x, t, class_labels)`` is the raw network (the scheduler applies any preconditioning); it is called once
    per entry ``t`` of ``scheduler.timesteps``, a 0-d tensor, as the pipelines pass it (their networks broadcast it).
    """
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        prediction = net(model_input, t, class_labels)
        x = scheduler.step(prediction, t, x, return_dict=False)[0]
    return x


# Data


def torchvision_cifar10(root: str | Path, flip: bool = True) -> Dataset:
    """torchvision's CIFAR-10 training set with the transforms of the usual training scripts (diffusers'
    ``train_unconditional.py``, the DDPM ports): random flip, ``ToTensor``, normalise to [-1, 1]."""
    from torchvision import datasets, transforms

    steps = [transforms.RandomHorizontalFlip()] if flip else []
    steps += [transforms.ToTensor(), transforms.Normalize([0.5] * 3, [0.5] * 3)]
    return datasets.CIFAR10(root, train=True, transform=transforms.Compose(steps))


# Evaluation


class _UnitRangeFeatures(nn.Module):
    """clean-fid hands a feature network ``(B, 3, H, W)`` floats in [0, 255]; a package feature network takes
    ``(B, C, H, W)`` in [-1, 1] and returns ``(features, logits)``."""

    def __init__(self, net: nn.Module, channels: int) -> None:
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images[:, : self.channels] / 127.5 - 1)[0]


def cleanfid_folder_fid(
    folder_a: str | Path, folder_b: str | Path, feature_net: nn.Module, channels: int, batch_size: int = 256
) -> float:
    """clean-fid's FID between two folders of images (``compare_folders``), with ``feature_net`` as its feature
    extractor and the images at their own size (no resizing): the same work as ``python -m diffbook evaluate
    --metrics fid`` on those folders."""
    from cleanfid import fid

    device = next(feature_net.parameters()).device
    return float(
        fid.compare_folders(
            str(folder_a),
            str(folder_b),
            _UnitRangeFeatures(feature_net, channels),
            mode="clean",
            num_workers=0,
            batch_size=batch_size,
            device=device,
            verbose=False,
            custom_fn_resize=_unchanged,
        )
    )


def _unchanged(image: np.ndarray) -> np.ndarray:
    return image
