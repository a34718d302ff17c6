"""DiffiT's time-dependent multi-head self-attention (TMSA) and the transformer block built on it.

TMSA (Hatamizadeh et al., ECCV 2024, §3.2) projects one time token ``x_t`` into the queries, keys and values of
every attention block, ``q = x_s W_qs + x_t W_qt``, ``k = x_s W_ks + x_t W_kt``, ``v = x_s W_vs + x_t W_vt``
(Eq. 3-5), and attends with a learned relative-position bias ``B``: ``softmax(q k^T / sqrt(d) + B) v`` (Eq. 6),
inside non-overlapping, unshifted windows. Time enters nowhere else: no adaLN, no per-channel bias. Here ``x_t``
is the paper's symbol for the time token, not the noised sample of the book's notation.

The key-side term ``x_t W_kt`` adds ``q_i . k_t`` to every logit of query ``i``, a constant the softmax removes,
so ``W_kt`` gets zero gradient and can be dropped (``time_keys=False``) without changing the output (book:
diffit_decisions, D10).

Both DiffiT networks, the image-space U-Net (:mod:`diffbook.nets.diffit`) and the latent transformer
(:mod:`diffbook.nets.latent_diffit`), are stacks of :class:`DiffiTBlock`. ``time_mode`` selects where time
enters, for the ablations of the paper's Tables 6 and 7 (see :data:`TIME_MODES`). Decision numbers (D1-D18)
refer to the book page *DiffiT: implementation decisions* (``book/diffit_decisions.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from diffbook.nets.transformer import Mlp, gated, layer_norm, modulate, multihead_attention

TIME_MODES: dict[str, str] = {
    "tmsa": "time in q, k and v of every attention (the paper's TMSA; Table 6 H)",
    "bias": "time only in the attention bias: a time-dependent relative-position table (Table 6 F)",
    "mlp": "time added to the input of every MLP (Table 6 G)",
    "token": "a separate time token appended to the keys and values (Table 7)",
    "adaln": "adaLN-Zero modulation of both branches, DiT's conditioning (the paper's Fig. 7b baseline)",
}


def check_time_mode(name: str) -> None:
    """Raise a ValueError naming the valid choices when ``name`` is not one of :data:`TIME_MODES`."""
    if name not in TIME_MODES:
        raise ValueError(f"time_mode must be one of {', '.join(TIME_MODES)}, got {name!r}")


# Windows


def window_partition(x: Tensor, window: int) -> Tensor:
    """Non-overlapping ``window x window`` tiles: ``x: (B, H, W, C)`` -> ``(B, nW, window^2, C)``.

    Windows are ordered row-major over the image, tokens row-major inside each window.
    """
    B, H, W, C = x.shape
    if H % window or W % window:
        raise ValueError(f"a {H}x{W} grid does not tile into {window}x{window} windows")
    x = x.reshape(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, (H // window) * (W // window), window * window, C)


def window_reverse(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`window_partition`: ``(B, nW, window^2, C)`` -> ``(B, height, width, C)``."""
    B, _, _, C = windows.shape
    x = windows.reshape(B, height // window, width // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, height, width, C)


def relative_position_index(window: int) -> Tensor:
    """Swin's table index: ``(N, N)`` int64, ``N = window^2``, entry ``(i, j)`` the row of the offset ``i - j``
    in a ``(2 window - 1)^2`` table, so that every pair of tokens with the same offset shares one bias."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    offsets = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, N, N), each in [0, 2 window - 2]
    return offsets[0] * (2 * window - 1) + offsets[1]


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset (Swin v1): ``() -> (heads, N, N)``, ``N = window^2``."""

    index: Tensor  # (N, N) int64, registered as a buffer

    def __init__(self, window: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Not persistent: a function of the window size, not learned state.
        self.register_buffer("index", relative_position_index(window), persistent=False)

    @property
    def table_size(self) -> int:
        """Rows of the table, ``(2 window - 1)^2``: one per relative offset."""
        return self.table.shape[0]

    def lookup(self, table: Tensor) -> Tensor:
        """Spread a table ``(..., (2w-1)^2, heads)`` over token pairs: ``(..., heads, N, N)``."""
        return table[..., self.index, :].movedim(-1, -3)

    def forward(self) -> Tensor:
        """``() -> (heads, N, N)``: this layer's own table over token pairs."""
        return self.lookup(self.table)


# TMSA and the DiffiT block


class WindowAttention(nn.Module):
    """Multi-head self-attention in windows with a relative-position bias, and time as ``time_input`` says.

    ``time_input``: ``"qkv"`` is TMSA (a time projection to q, k and v, with bias; ``time_keys=False`` drops its
    key third; book: diffit_decisions, D10), ``"bias"`` adds a time-projected table to the bias, ``"token"``
    appends one time token to the keys and values (projected by the spatial ``W_k, W_v``, with zero position
    bias), ``None`` ignores time.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        time_dim: int,
        time_input: str | None = "qkv",
        time_keys: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"{dim} channels do not split into {num_heads} heads")
        self.num_heads, self.window = num_heads, window
        self.time_input, self.time_keys = time_input, time_keys
        self.qkv = nn.Linear(dim, 3 * dim)
        self.bias = RelativePositionBias(window, num_heads)
        self.proj = nn.Linear(dim, dim)
        if time_input == "qkv":
            self.time_qkv = nn.Linear(time_dim, (3 if time_keys else 2) * dim)
        elif time_input == "bias":
            self.time_bias = nn.Linear(time_dim, self.bias.table_size * num_heads)
        elif time_input == "token":
            self.time_token = nn.Linear(time_dim, dim)
        elif time_input is not None:
            raise ValueError(f"time_input must be 'qkv', 'bias', 'token' or None, got {time_input!r}")

    def time_projections(self, x_t: Tensor) -> Tensor:
        """TMSA's ``[x_t W_qt, x_t W_kt, x_t W_vt]``: ``x_t: (B, time_dim)`` -> ``(B, 3 dim)``; zeros for the
        key third when ``time_keys=False``."""
        qkv_t = self.time_qkv(x_t)
        if self.time_keys:
            return qkv_t
        q_t, v_t = qkv_t.chunk(2, dim=-1)
        return torch.cat([q_t, torch.zeros_like(q_t), v_t], dim=-1)

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        """x: (B, H, W, C) tokens on their grid, x_t: (B, time_dim) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        q, k, v, bias = self._queries_keys_values(x, x_t)
        out = multihead_attention(q, k, v, self.num_heads, bias)
        return window_reverse(self.proj(out).reshape(B, -1, self.window**2, C), self.window, H, W)

    def attention_probabilities(self, x: Tensor, x_t: Tensor) -> Tensor:
        """The attention matrix ``softmax(q k^T / sqrt(d) + B)`` that :meth:`forward` applies, for inspection:
        ``x: (B, H, W, C)`` -> ``(B, nW, heads, N, M)``, ``N = window^2`` queries and ``M`` keys (``N + 1`` with a
        time token, the last); windows row-major over the image, tokens row-major inside each window."""
        B = x.shape[0]
        q, k, _, bias = self._queries_keys_values(x, x_t)
        q, k = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k))
        logits = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias
        return logits.softmax(-1).unflatten(0, (B, -1))

    def _queries_keys_values(self, x: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``q: (B nW, N, C)``, ``k, v: (B nW, M, C)`` and the bias, broadcastable to ``(B nW, heads, N, M)``."""
        B, H, W, C = x.shape
        windows = window_partition(x, self.window)  # (B, nW, N, C)
        nW, N = windows.shape[1:3]
        qkv = self.qkv(windows)
        if self.time_input == "qkv":
            qkv = qkv + self.time_projections(x_t)[:, None, None, :]
        q, k, v = qkv.reshape(B * nW, N, 3 * C).chunk(3, dim=-1)
        bias = self.bias()[None]  # (1, heads, N, N), the same in every window
        if self.time_input == "bias":
            time_table = self.time_bias(x_t).reshape(B, self.bias.table_size, self.num_heads)
            bias = (bias + self.bias.lookup(time_table)).repeat_interleave(nW, dim=0)  # (B nW, heads, N, N)
        elif self.time_input == "token":
            _, k_t, v_t = self.qkv(self.time_token(x_t)).repeat_interleave(nW, dim=0)[:, None].chunk(3, dim=-1)
            k, v = torch.cat([k, k_t], dim=1), torch.cat([v, v_t], dim=1)
            bias = F.pad(bias, (0, 1))  # the time token has no position: bias 0 towards it
        return q, k, v, bias


def drop_time_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict of a TMSA network (or layer) with the key third of every time projection removed: what the
    same network built with ``time_keys=False`` loads, computing the same function (book: diffit_decisions, D10)."""
    kept = {}
    for name, value in state.items():
        if name.endswith(("time_qkv.weight", "time_qkv.bias")):
            q_t, _, v_t = value.chunk(3, dim=0)
            value = torch.cat([q_t, v_t])
        kept[name] = value
    return kept


class DiffiTBlock(nn.Module):
    """The pre-LN transformer block of Eq. 7-8: ``x' = x + TMSA(LN(x), x_t)``, ``out = x' + MLP(LN(x'))``.

    LN has no affine parameters; the MLP is ``mlp_ratio`` wide with tanh-GELU and dropout on its hidden layer.
    ``time_mode`` (:data:`TIME_MODES`) moves time out of the attention: ``"mlp"`` adds ``W x_t`` to the MLP's
    input, ``"adaln"`` modulates both branches with DiT's zero-initialised shift, scale and gate.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        time_dim: int,
        time_mode: str = "tmsa",
        time_keys: bool = True,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_time_mode(time_mode)
        self.time_mode = time_mode
        time_input = {"tmsa": "qkv", "bias": "bias", "token": "token"}.get(time_mode)
        self.norm1 = layer_norm(dim)
        self.attn = WindowAttention(dim, num_heads, window, time_dim, time_input, time_keys)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout)
        if time_mode == "mlp":
            self.time_mlp = nn.Linear(time_dim, dim)
        elif time_mode == "adaln":
            self.modulation = nn.Linear(time_dim, 6 * dim)

    def forward(self, x: Tensor, x_t: Tensor) -> Tensor:
        """x: (B, H, W, C), x_t: (B, time_dim) -> (B, H, W, C)."""
        if self.time_mode == "adaln":
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(x_t).chunk(6, dim=-1)
            x = gated(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1), x_t))
            return gated(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))
        x = x + self.attn(self.norm1(x), x_t)
        h = self.norm2(x)
        if self.time_mode == "mlp":
            h = h + self.time_mlp(x_t)[:, None, None]
        return x + self.mlp(h)


def init_tmsa_parts(module: nn.Module) -> None:
    """Initialise what both DiffiT networks share, in place, after their own scheme: trunc-normal 0.02 bias tables
    (Swin; the released latent model's), and adaLN-Zero's modulation at zero, so that in that ablation every block
    starts as the identity (DiT)."""
    for sub in module.modules():
        if isinstance(sub, RelativePositionBias):
            nn.init.trunc_normal_(sub.table, std=0.02)
        elif isinstance(sub, DiffiTBlock) and sub.time_mode == "adaln":
            nn.init.zeros_(sub.modulation.weight)
            nn.init.zeros_(sub.modulation.bias)
