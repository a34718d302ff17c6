"""Text-to-image fine-tuning's objective: a base objective on VAE latents conditioned on text embeddings.

Stable Diffusion trains on the VAE's latents of an image, conditioned on the text encoder's hidden states of its
caption; both come from the frozen companions of the network's weights (``network.weights``: ``vae/`` and
``text_encoder/``). The base objective (the MSE or the self-perceptual loss) sees the batch ``(latents, text)``.

Caption dropout replaces a caption by the empty prompt with probability ``caption_dropout``, before the text
encoder, so that the dropped condition is exactly the null condition that classifier-free guidance samples with
(the empty prompt's hidden states, :func:`diffbook.experiments.sampling.encode_prompts`). The base sees one
condition per example, so the self-perceptual loss's frozen network sees the same one as the online network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffbook.data.captions import load_tokenizer, tokenize
from diffbook.diffusion.denoiser import Denoiser
from diffbook.objectives.denoising import dropout_mask
from diffbook.objectives.registry import OBJECTIVES, ObjectiveContext, base_objective


@dataclass
class LatentTextObjective:
    """``base`` on VAE latents and text embeddings: ``batch = (pixels: (B, 3, R, R), token ids: (B, L))``.

    The VAE and the text encoder are frozen and held as plain attributes, out of the optimizer, the checkpoint
    and DistributedDataParallel, like the self-perceptual loss's frozen network. ``null_tokens: (1, L)`` are the
    empty prompt's token ids, which replace a caption with probability ``caption_dropout``.
    """

    base: Callable[..., dict[str, Tensor]]
    vae: Any  # diffusers' AutoencoderKL
    text_encoder: nn.Module
    null_tokens: Tensor
    caption_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_caption_dropout(self.caption_dropout)

    def __call__(self, model: Denoiser, batch: tuple, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        pixels, tokens = batch
        device = pixels.device
        self.vae.to(device), self.text_encoder.to(device)
        tokens = self.drop_captions(tokens, generator)
        with torch.no_grad():
            latents = self.vae.encode(pixels).latent_dist.sample() * self.vae.config.scaling_factor
            text = self.text_encoder(tokens)[0]
        return self.base(model, (latents, text), generator)

    def drop_captions(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``tokens: (B, L)`` with each row replaced by ``null_tokens`` with probability ``caption_dropout``, drawn
        from ``generator``; unchanged, and nothing drawn, at probability 0."""
        if self.caption_dropout == 0:
            return tokens
        if self.null_tokens.shape[-1] != tokens.shape[-1]:
            raise ValueError(
                f"captions have {tokens.shape[-1]} tokens but the weights' tokenizer makes "
                f"{self.null_tokens.shape[-1]}: leave data.tokenizer unset, so that captions and the empty prompt "
                "share one tokenizer"
            )
        drop = dropout_mask(tokens.shape[0], self.caption_dropout, generator, tokens)
        return torch.where(drop[:, None], self.null_tokens.to(tokens.device), tokens)


def check_caption_dropout(probability: float) -> None:
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"objective.caption_dropout must be in [0, 1], got {probability}")


@dataclass(frozen=True)
class LatentTextOptions:
    """The ``objective`` section of ``kind: latent_text``: the objective on the latents and text, ``base``, and
    the probability that a caption is replaced by the empty prompt, ``caption_dropout``."""

    base: str | dict = "denoising"
    caption_dropout: float = 0.0

    def __post_init__(self) -> None:
        check_caption_dropout(self.caption_dropout)
        if isinstance(self.base, dict) and self.base.get("label_dropout"):
            raise ValueError(
                "objective.base.label_dropout drops class labels; a text-conditioned model drops captions: "
                "set objective.caption_dropout instead"
            )


def load_text_encoder(weights: str | None) -> nn.Module:
    """The frozen CLIP text encoder of a diffusers Stable Diffusion folder."""
    from diffbook.nets.diffusers_unet import check_sd_weights

    folder = check_sd_weights(weights)
    try:
        from transformers import CLIPTextModel
    except ImportError as error:
        raise ImportError("Stable Diffusion needs diffusers and transformers: pip install 'diffbook[sd]'") from error
    return CLIPTextModel.from_pretrained(folder / "text_encoder").eval().requires_grad_(False)


def build_latent_text(options: LatentTextOptions, context: ObjectiveContext) -> LatentTextObjective:
    base = base_objective(options.base, 0.0, context, "objective.base")
    started_from = getattr(getattr(context.model, "net", None), "pretrained_prediction", None)
    kind = options.base if isinstance(options.base, str) else options.base.get("kind")
    if kind == "self_perceptual" and started_from == "epsilon":
        raise ValueError(
            "self-perceptual fine-tuning starts from a v-prediction, zero-terminal-SNR MSE model, and these weights "
            "predict epsilon: train the MSE stage first and set network.overrides.unet to its exported unet/"
        )
    from diffbook.nets.vae import load_vae

    text_encoder = load_text_encoder(context.weights)  # checks the folder first
    folder = Path(str(context.weights))
    null_tokens = tokenize(load_tokenizer(folder / "tokenizer"), [""])  # the sampler's null condition
    return LatentTextObjective(
        base, load_vae(folder / "vae"), text_encoder, null_tokens, caption_dropout=options.caption_dropout
    )


OBJECTIVES.register("latent_text", LatentTextOptions, build_latent_text)
