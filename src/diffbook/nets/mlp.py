"""A noise-conditioned MLP: the denoiser for 2D toy data, small enough to train in seconds on a CPU."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.embeddings import ConditionEmbedding


class TimeMLP(nn.Module):
    """An MLP with widths ``[dim, hidden x depth, dim]`` that sees the noise label at every hidden layer.

    The defaults give Iso-Diffusion's "[2, 128, 128, 128, 2] with time embedding". Each hidden layer adds its
    own projection of the condition embedding before its SiLU, as a U-Net ResBlock adds it as a channel bias.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        depth: int = 3,
        emb_dim: int = 128,
        num_classes: int = 0,
        embedding: str = "sinusoidal",
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.embed = ConditionEmbedding(emb_dim, emb_dim, num_classes, embedding)
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x: (B, dim), noise_labels: (B,) float, class_labels: (B,) int64 or None -> (B, dim)."""
        emb = self.embed(noise_labels, class_labels)
        for layer, proj in zip(self.layers, self.emb_proj, strict=True):
            x = F.silu(layer(x) + proj(emb))
        return self.out(x)
