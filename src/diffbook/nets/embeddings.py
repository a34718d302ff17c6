"""How a network is told the noise level (and the class) of its input.

A raw noise label is a single number per example, far too weak a signal to add to hundreds of channels.
Every network here first spreads it over sines and cosines of it at many frequencies, then a small MLP maps
those features to the width its blocks are conditioned on. Class labels, when present, are looked up in a
table and added to the features before that MLP.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class SinusoidalEmbedding(nn.Module):
    """Sines and cosines of a scalar at geometrically spaced frequencies (DDPM; EDM's PositionalEmbedding).

    The frequencies fall from 1 to ``1 / max_period``. With ``endpoint=True`` (DDPM, EDM's SongUNet) the last
    one is exactly ``1 / max_period``; with ``endpoint=False`` (the Transformer, ADM) it stops one step short.
    Any real input works, so one module embeds a DDPM step index t in [0, 1000) as well as EDM's ln(sigma)/4.
    """

    freqs: Tensor  # (dim / 2,), registered as a buffer

    def __init__(self, dim: int, max_period: float = 10_000.0, endpoint: bool = True) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"dim must be even and at least 4, got {dim}")
        half = dim // 2
        exponents = torch.arange(half, dtype=torch.float32) / (half - 1 if endpoint else half)
        # Not persistent: the frequencies are a function of the arguments, not learned or random state.
        self.register_buffer("freqs", max_period**-exponents, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) float -> (B, dim), sines first then cosines."""
        angles = torch.outer(t.to(self.freqs.dtype), self.freqs)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``sin, cos(2 pi f t)`` with ``f ~ N(0, scale^2)`` (NCSN++, EDM's VE network).

    The frequencies are drawn once at construction and never trained; they are saved with the weights, since
    a reloaded network must see the same features. ``scale=16`` suits labels of order one, such as log-sigma.
    """

    freqs: Tensor  # (dim / 2,), registered as a buffer

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be even and positive, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) float -> (B, dim), sines first then cosines."""
        angles = torch.outer(t.to(self.freqs.dtype), 2 * math.pi * self.freqs)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


# 'positional' is EDM's name for the sinusoidal embedding; both names are accepted everywhere.
NOISE_EMBEDDINGS: dict[str, type[nn.Module]] = {
    "sinusoidal": SinusoidalEmbedding,
    "positional": SinusoidalEmbedding,
    "fourier": FourierEmbedding,
}


def check_embedding(name: str) -> None:
    """Raise a ValueError naming the valid choices when ``name`` is not a noise embedding."""
    if name not in NOISE_EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(NOISE_EMBEDDINGS)}, got {name!r}")


class EmbeddingMLP(nn.Sequential):
    """The standard map from embedding features to the conditioning width: Linear -> SiLU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))


class ConditionEmbedding(nn.Module):
    """Noise label and optional class label -> one conditioning vector per example.

    With ``num_classes > 0`` the label table has ``num_classes + 1`` rows: row ``num_classes`` is the null
    class of classifier-free guidance, used wherever ``class_labels`` is None.
    """

    def __init__(self, dim: int, out_dim: int, num_classes: int = 0, embedding: str = "sinusoidal") -> None:
        super().__init__()
        check_embedding(embedding)
        self.num_classes = num_classes
        self.noise = NOISE_EMBEDDINGS[embedding](dim)
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None
        self.mlp = EmbeddingMLP(dim, out_dim)

    def forward(self, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """noise_labels: (B,) float, class_labels: (B,) int64 or None -> (B, out_dim).

        The output has been through a SiLU: every consumer projects it with its own Linear, and the SiLU in
        front of those projections is shared here (DDPM applies it per block, EDM once; the result is equal).
        """
        return F.silu(self.mlp(self.features(noise_labels, class_labels)))

    def features(self, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The noise features plus the class row: noise_labels (B,), class_labels (B,) or None -> (B, dim)."""
        emb = self.noise(noise_labels)
        if self.label is not None:
            if class_labels is None:
                class_labels = torch.full_like(noise_labels, self.num_classes, dtype=torch.long)
            emb = emb + self.label(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels given to a network built with num_classes=0")
        return emb


class TwoTimeEmbedding(ConditionEmbedding):
    """Two noise labels, the start ``t`` and the end ``u`` of a jump (BCM), and an optional class -> one vector.

    ``emb = SiLU(W [MLP_t(features(t) + class); MLP_u(features(u))])`` with ``W`` a bias-free ``2 out -> out``
    map (Li & He 2024, the authors' ``time_embed_align``). The t-branch is the single-time embedding itself,
    under the same names (``noise``, ``label``, ``mlp``), so a single-time network's weights load into it; after
    :meth:`init_from_single_time` (``MLP_u`` a copy of ``MLP_t``, ``W = [I | 0]``) the network ignores ``u`` and
    computes exactly what the single-time network did.
    """

    def __init__(self, dim: int, out_dim: int, num_classes: int = 0, embedding: str = "sinusoidal") -> None:
        super().__init__(dim, out_dim, num_classes, embedding)
        self.mlp_u = EmbeddingMLP(dim, out_dim)
        self.merge = nn.Linear(2 * out_dim, out_dim, bias=False)

    def forward(self, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """noise_labels: (B, 2) float, the labels of ``t`` and ``u``; class_labels: (B,) or None -> (B, out_dim)."""
        if noise_labels.ndim != 2 or noise_labels.shape[1] != 2:
            raise ValueError(f"a two-time network takes noise labels of shape (B, 2), got {tuple(noise_labels.shape)}")
        t_labels, u_labels = noise_labels.unbind(1)
        emb_t = self.mlp(self.features(t_labels, class_labels))
        emb_u = self.mlp_u(self.noise(u_labels))
        return F.silu(self.merge(torch.cat([emb_t, emb_u], dim=1)))

    @torch.no_grad()
    def init_from_single_time(self) -> None:
        """``MLP_u <- MLP_t`` and ``W <- [I | 0]``: the embedding then equals the single-time one, whatever ``u``."""
        self.mlp_u.load_state_dict(self.mlp.state_dict())
        out_dim = self.merge.out_features
        self.merge.weight.zero_()
        self.merge.weight[:, :out_dim].copy_(torch.eye(out_dim))


def load_single_time_weights(net: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load a single-time network's ``state_dict`` into the same network built with ``two_times=True``.

    ``net.embed`` must be a :class:`TwoTimeEmbedding`; every weight but its u-branch and merge must be in
    ``state_dict``, which then start as :meth:`TwoTimeEmbedding.init_from_single_time` sets them. The route of
    BCM fine-tuning: the two-time network starts as the consistency model it was initialised from.
    """
    embed = getattr(net, "embed", None)
    if not isinstance(embed, TwoTimeEmbedding):
        raise ValueError("load_single_time_weights needs a network built with two_times=True")
    new_keys = {key for key in net.state_dict() if key.startswith(("embed.mlp_u.", "embed.merge."))}
    if new_keys <= state_dict.keys():
        raise ValueError("the state_dict already holds a two-time embedding: load it with net.load_state_dict")
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if unexpected or set(missing) != new_keys:
        raise ValueError(
            "the state_dict is not a single-time version of this network: "
            f"missing {sorted(set(missing) - new_keys)}, unexpected {sorted(unexpected)}"
        )
    embed.init_from_single_time()
