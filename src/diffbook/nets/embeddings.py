"""How a network is told the noise level (and the class) of its input.

A raw noise label is a single number per example, far too weak a signal to add to hundreds of channels.
Every network here first spreads it over sines and cosines of it at many frequencies, then a small MLP maps
those features to the width its blocks are conditioned on. Class labels, when present, are looked up in a
table and added to the features before that MLP; BCM's two-time embedding adds them after it, as the authors'
ADM network does (see :class:`TwoTimeEmbedding`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


def add_class_row(emb: Tensor, table: nn.Embedding | None, num_classes: int, class_labels: Tensor | None) -> Tensor:
    """``emb: (B, D)`` plus the row of ``table`` for each class, the null class (row ``num_classes``, guidance's
    unconditional branch) where ``class_labels`` is None; ``emb`` itself for a network built without classes."""
    if table is None:
        if class_labels is not None:
            raise ValueError("class_labels given to a network built with num_classes=0")
        return emb
    if class_labels is None:
        class_labels = torch.full(emb.shape[:1], num_classes, dtype=torch.long, device=emb.device)
    return emb + table(class_labels)


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
        return add_class_row(self.noise(noise_labels), self.label, self.num_classes, class_labels)


class TwoTimeEmbedding(nn.Module):
    """Two noise labels, the start ``t`` and the end ``u`` of a jump (BCM), and an optional class -> one vector.

    ``emb = SiLU(W [MLP_t(features(t)); MLP_u(features(u))] + class)`` with ``W`` a bias-free ``2 out -> out``
    map, the authors' ``time_embed_align`` (Li & He 2024). The class row is ``out`` wide and added after the
    merge, where their network adds it, not to the features before the MLP as :class:`ConditionEmbedding` does.
    With ``num_classes > 0`` the table has ``num_classes + 1`` rows, the last the null class, as there.

    The t-branch has the single-time embedding's names (``noise``, ``mlp``), so an unconditional single-time
    network's weights load into it; after :meth:`init_from_single_time` (``MLP_u`` a copy of ``MLP_t``,
    ``W = [I | 0]``) the embedding ignores ``u`` and is ``SiLU(MLP_t(features(t)) + class)``: the single-time
    embedding exactly when there is no class, and ADM's, which adds its class to the MLP's output, when there
    is one. A class-conditional :class:`ConditionEmbedding` puts its class inside the MLP, so its weights cannot
    start a class-conditional two-time network exactly (:func:`load_single_time_weights` refuses them).
    """

    def __init__(self, dim: int, out_dim: int, num_classes: int = 0, embedding: str = "sinusoidal") -> None:
        super().__init__()
        check_embedding(embedding)
        self.num_classes = num_classes
        self.noise = NOISE_EMBEDDINGS[embedding](dim)
        self.mlp = EmbeddingMLP(dim, out_dim)
        self.mlp_u = EmbeddingMLP(dim, out_dim)
        self.merge = nn.Linear(2 * out_dim, out_dim, bias=False)
        self.label = nn.Embedding(num_classes + 1, out_dim) if num_classes > 0 else None

    def forward(self, noise_labels: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """noise_labels: (B, 2) float, the labels of ``t`` and ``u``; class_labels: (B,) or None -> (B, out_dim)."""
        if noise_labels.ndim != 2 or noise_labels.shape[1] != 2:
            raise ValueError(f"a two-time network takes noise labels of shape (B, 2), got {tuple(noise_labels.shape)}")
        t_labels, u_labels = noise_labels.unbind(1)
        emb_t = self.mlp(self.noise(t_labels))
        emb_u = self.mlp_u(self.noise(u_labels))
        emb = self.merge(torch.cat([emb_t, emb_u], dim=1))
        return F.silu(add_class_row(emb, self.label, self.num_classes, class_labels))

    @torch.no_grad()
    def init_from_single_time(self) -> None:
        """``MLP_u <- MLP_t`` and ``W <- [I | 0]``: the embedding is then ``SiLU(MLP_t(features(t)) + class)``,
        whatever ``u``."""
        self.mlp_u.load_state_dict(self.mlp.state_dict())
        out_dim = self.merge.out_features
        self.merge.weight.zero_()
        self.merge.weight[:, :out_dim].copy_(torch.eye(out_dim))


def load_single_time_weights(net: nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load a single-time network's ``state_dict`` into the same network built with ``two_times=True``.

    Every weight but the two-time network's u-branch and merge must be in ``state_dict``; those then start as
    :meth:`TwoTimeEmbedding.init_from_single_time` sets them, so the network computes what the single-time one
    did. The route of BCM fine-tuning: the two-time network starts as the consistency model it was initialised
    from. ``net.embed`` is a :class:`TwoTimeEmbedding`, unconditional (see there why), or ``net`` is a network
    of a released layout (:class:`~diffbook.nets.adm_unet.ADMUNet`) that names its own ``u_branch`` and
    ``init_from_single_time``.
    """
    if holds_two_times(net, state_dict):
        raise ValueError("the state_dict already holds a two-time embedding: load it with net.load_state_dict")
    u_branch, init_from_single_time = _u_branch(net)
    new_keys = {key for key in net.state_dict() if key.startswith(u_branch)}
    missing, unexpected = net.load_state_dict(state_dict, strict=False)
    if unexpected or set(missing) != new_keys:
        raise ValueError(
            "the state_dict is not a single-time version of this network: "
            f"missing {sorted(set(missing) - new_keys)}, unexpected {sorted(unexpected)}"
        )
    init_from_single_time()


def holds_two_times(net: nn.Module, state_dict: dict[str, Tensor]) -> bool:
    """Whether ``state_dict`` has every weight of two-time ``net``'s u-branch and merge (then it loads as it is)."""
    embed = getattr(net, "embed", None)
    prefixes = ("embed.mlp_u.", "embed.merge.") if isinstance(embed, TwoTimeEmbedding) else getattr(net, "u_branch", ())
    new_keys = {key for key in net.state_dict() if key.startswith(tuple(prefixes))}
    return bool(new_keys) and new_keys <= state_dict.keys()


def _u_branch(net: nn.Module) -> tuple[tuple[str, ...], Callable[[], None]]:
    """The key prefixes of ``net``'s u-branch and merge, and what starts them from the t-branch."""
    embed = getattr(net, "embed", None)
    if isinstance(embed, TwoTimeEmbedding):
        if embed.label is not None:
            raise ValueError(
                "a class-conditional single-time network adds its class before its MLP, the two-time embedding "
                "after the merge (Li & He's order), so its weights cannot start this network exactly; fine-tune "
                "class-conditional consistency models with network.kind adm, which adds the class after, as ADM does"
            )
        return ("embed.mlp_u.", "embed.merge."), embed.init_from_single_time
    u_branch, init = getattr(net, "u_branch", None), getattr(net, "init_from_single_time", None)
    if not getattr(net, "two_times", False) or u_branch is None or init is None:
        raise ValueError("load_single_time_weights needs a network built with two_times=True")
    return tuple(u_branch), init
