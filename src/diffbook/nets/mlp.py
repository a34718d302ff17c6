"""A noise-conditioned MLP: the denoiser for 2D toy data, small enough to train in seconds on a CPU."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.embeddings import ConditionEmbedding, TwoTimeEmbedding


class TimeMLP(nn.Module):
    """An MLP with widths ``[dim, hidden x depth, dim]`` that sees the noise label at every hidden layer.

    The defaults give Iso-Diffusion's "[2, 128, 128, 128, 2] with time embedding". Each hidden layer adds its
    own projection of the condition embedding before its SiLU, as a U-Net ResBlock adds it as a channel bias.
    ``two_times=True`` conditions on two noise labels, ``(B, 2)``, through a :class:`TwoTimeEmbedding` (BCM).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 128,
        num_classes: int = 0,
        embedding: str = "sinusoidal",
        two_times: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.two_times = two_times
        self.embed = (TwoTimeEmbedding if two_times else ConditionEmbedding)(emb_dim, emb_dim, num_classes, embedding)
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, dim), noise_labels: (B,) float ((B, 2) if two_times), class_labels: (B,) int64 or None -> (B, dim)."""
        emb, rows = self._distinct_embeddings(noise_labels, class_labels)
        for layer, proj in zip(self.layers, self.emb_proj, strict=True):
            x = F.silu(layer(x) + proj(emb)[rows])
        return self.out(x)

    def _distinct_embeddings(self, noise_labels: Tensor, class_labels: Tensor | None) -> tuple[Tensor, Tensor]:
        return distinct_embeddings(self.embed, noise_labels, class_labels)


def distinct_embeddings(embed: nn.Module, noise_labels: Tensor, class_labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """The embeddings of the distinct unconditional noise labels, and each sample's row among them.

    A sampler's batch shares one noise level, so this embeds and projects it once instead of once per point:
    half the work of a sampling step. Class-conditional batches are embedded row by row.
    """
    if class_labels is not None:
        return embed(noise_labels, class_labels), torch.arange(len(noise_labels), device=noise_labels.device)
    distinct, rows = torch.unique(noise_labels, dim=0, return_inverse=True)
    return embed(distinct, None), rows
