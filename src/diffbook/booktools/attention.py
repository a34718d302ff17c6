"""DiffiT's time-dependent attention, looked into: what one pixel attends to as the noise level moves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from matplotlib.axes import Axes
from torch import Tensor

from diffbook.booktools.explorer import Control, Explorer
from diffbook.diffusion import Denoiser
from diffbook.nets.tmsa import WindowAttention
from diffbook.viz import show_images


@dataclass(frozen=True)
class AttentionState:
    """One query pixel's attention in one TMSA layer at one noise level.

    ``noisy: (C, H, W)`` is the input ``x0 + sigma eps``; ``maps: (heads, h, w)`` the query's attention weights
    on the layer's ``h x w`` grid (zero outside its window); ``query`` its ``(row, col)`` on that grid;
    ``time_weight: (heads,)`` the weight on a separate time token (zero unless the layer has one).
    """

    sigma: float
    noisy: Tensor
    maps: Tensor
    query: tuple[int, int]
    time_weight: Tensor

    @property
    def entropy(self) -> Tensor:
        """Each head's attention entropy in nats, ``(heads,)``: ``log(window^2)`` when uniform over the window."""
        p = torch.cat([self.maps.flatten(1), self.time_weight[:, None]], dim=1)
        return -(p * p.clamp_min(1e-30).log()).sum(1)


def attention_layers(net: torch.nn.Module) -> list[str]:
    """The names of a network's windowed attention layers (:class:`~diffbook.nets.tmsa.WindowAttention`)."""
    return [name for name, module in net.named_modules() if isinstance(module, WindowAttention)]


def attention_layer(denoiser: Denoiser, layer: str) -> WindowAttention:
    """The windowed attention layer named ``layer`` of ``denoiser.net``."""
    attention = denoiser.net.get_submodule(layer)
    if not isinstance(attention, WindowAttention):
        raise ValueError(f"{layer!r} is a {type(attention).__name__}, not a WindowAttention layer")
    return attention


@torch.no_grad()
def attention_inputs(denoiser: Denoiser, noisy: Tensor, sigma: float, layer: str) -> tuple[Tensor, Tensor]:
    """What the attention layer named ``layer`` of ``denoiser.net`` (a DiffiT network inside a
    :class:`~diffbook.diffusion.Denoiser`) receives when the denoiser runs on ``noisy: (B, C, H, W)`` at level
    ``sigma``: its tokens ``(B, h, w, dim)`` and time token ``(B, time_dim)``, caught by a forward hook. The layer's
    ``attention_probabilities``, ``qkv`` and ``time_projections`` then take them apart."""
    attention = attention_layer(denoiser, layer)
    caught: list[tuple[Tensor, Tensor]] = []
    handle = attention.register_forward_hook(lambda module, args, output: caught.append(args))
    try:
        denoiser(noisy, torch.full((len(noisy),), sigma, dtype=noisy.dtype))
    finally:
        handle.remove()
    return caught[0]


@torch.no_grad()
def attention_summary(denoiser: Denoiser, noisy: Tensor, sigma: float, layer: str) -> tuple[float, float]:
    """Two numbers for the attention layer ``layer`` on the images ``noisy: (B, C, H, W)`` at level ``sigma``:

    - the entropy of the attention rows in nats, averaged over images, windows, heads and queries
      (``log(window^2)`` when uniform);
    - for TMSA, the size of the time query against the spatial ones, ``||q_t|| / rms_i ||a_i||`` averaged over
      images, where ``q_i = a_i + q_t``: how strongly time steers the queries (NaN for layers without TMSA).
    """
    attention = attention_layer(denoiser, layer)
    tokens, time_token = attention_inputs(denoiser, noisy, sigma, layer)
    p = attention.attention_probabilities(tokens, time_token)
    entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean().item()
    if attention.time_input != "qkv":
        return entropy, float("nan")
    C = tokens.shape[-1]
    spatial = attention.qkv(tokens)[..., :C].norm(dim=-1).square().mean(dim=(1, 2)).sqrt()  # (B,)
    time_query = attention.time_projections(time_token)[:, :C].norm(dim=-1)  # (B,)
    return entropy, (time_query / spatial).mean().item()


@torch.no_grad()
def attention_state(
    denoiser: Denoiser, x0: Tensor, sigma: float, layer: str, query: tuple[int, int], seed: int = 0
) -> AttentionState:
    """Attention of the pixel ``query`` of ``x0: (1, C, H, W)`` in the layer named ``layer`` of
    ``denoiser.net`` (see :func:`attention_inputs`), at noise level ``sigma``, on ``x0 + sigma eps`` with one
    seeded ``eps``. The query moves to the layer's grid by integer scaling.
    """
    attention = attention_layer(denoiser, layer)
    noisy = x0 + sigma * torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    tokens, time_token = attention_inputs(denoiser, noisy, sigma, layer)
    probs = attention.attention_probabilities(tokens, time_token)[0]  # (nW, heads, N, M)
    h, w = tokens.shape[1:3]
    row, col = query[0] * h // x0.shape[-2], query[1] * w // x0.shape[-1]
    size = attention.window
    window = (row // size) * (w // size) + col // size
    weights = probs[window, :, (row % size) * size + col % size]  # (heads, M)
    maps = torch.zeros(len(weights), h, w, dtype=weights.dtype)
    top, left = (row // size) * size, (col // size) * size
    maps[:, top : top + size, left : left + size] = weights[:, : size * size].reshape(-1, size, size)
    time_weight = weights[:, size * size :].sum(1)
    return AttentionState(sigma, noisy[0], maps, (row, col), time_weight)


def attention_explorer(
    denoiser: Denoiser,
    x0: Tensor,
    sigmas: Sequence[float] = (80.0, 10.0, 1.0, 0.1, 0.01),
    query: tuple[int, int] | None = None,
    layers: Sequence[str] | None = None,
) -> Explorer:
    """Where one pixel of the image ``x0: (1, C, H, W)`` looks, head by head, as the noise level moves: the
    noisy input with the query marked, beside each head's attention map in the chosen layer (brighter = more
    weight), for a trained DiffiT denoiser. The query defaults to the image's centre."""
    query = query or (x0.shape[-2] // 2, x0.shape[-1] // 2)
    layers = tuple(layers or attention_layers(denoiser.net))

    def draw(axes: Sequence[Axes], state: AttentionState) -> None:
        show_images(axes[0], state.noisy[None], title=f"σ = {state.sigma:g}")
        scale = state.noisy.shape[-1] / state.maps.shape[-1]
        axes[0].plot((state.query[1] + 0.5) * scale - 0.5, (state.query[0] + 0.5) * scale - 0.5, "r+", ms=10)
        mosaic = torch.cat([head / head.max().clamp_min(1e-12) for head in state.maps], dim=1)
        axes[1].imshow(mosaic.numpy(), cmap="magma", vmin=0, vmax=1)
        for k in range(len(state.maps)):
            axes[1].plot(state.query[1] + k * state.maps.shape[-1], state.query[0], "c+", ms=6)
        entropy = ", ".join(f"{e:.2f}" for e in state.entropy)
        axes[1].set_title(f"heads 1-{len(state.maps)}: entropy {entropy}", fontsize=7)
        axes[1].set_axis_off()

    return Explorer(
        "TMSA attention of one pixel as the noise level moves",
        [Control("sigma", tuple(sigmas), "σ"), Control("layer", layers, "layer")],
        lambda sigma, layer: attention_state(denoiser, x0, sigma, layer, query),
        draw,
        panels=2,
    )
