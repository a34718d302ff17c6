"""Load the officially released latent DiffiT weights (NVlabs/DiffiT, Hugging Face ``nvidia/DiffiT``) into
:class:`~diffbook.nets.latent_diffit.LatentDiffiT`.

The user supplies the checkpoint file (a plain state dict, as the release's ``sample.py`` loads it); nothing is
downloaded. The mapping is one of names, plus two layout facts:

- the release's timestep sinusoid is ``[cos, sin]`` and the package's ``[sin, cos]``, so the columns of the first
  time-MLP layer swap halves;
- its fixed position embedding and relative-position index are saved tensors, here recomputed from the config;
  the converter checks that they agree, which pins the token and table layouts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from diffbook.nets.dit import DiTConfig
from diffbook.nets.latent_diffit import LatentDiffiT, LatentDiffiTConfig
from diffbook.nets.tmsa import relative_position_index
from diffbook.nets.transformer import sincos_pos_embed_2d
from diffbook.runtime.files import load_weights, load_weights_file

# Released name (a regular expression on the whole key) -> the package's name: the names that DiffiT's release
# shares with DiT's (whose code it extends), then its own.
DIT_RELEASE_RENAMES: tuple[tuple[str, str], ...] = (
    (r"x_embedder\.proj\.(weight|bias)", r"patch.proj.\1"),
    (r"t_embedder\.mlp\.([02])\.(weight|bias)", r"embed.mlp.\1.\2"),
    (r"y_embedder\.embedding_table\.weight", r"embed.label.weight"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"final_layer\.linear\.(weight|bias)", r"final.linear.\1"),
)
_RENAMES: tuple[tuple[str, str], ...] = (
    *DIT_RELEASE_RENAMES,
    (r"blocks\.(\d+)\.attn\.qkv_temb\.(weight|bias)", r"blocks.\1.attn.time_qkv.\2"),
    (r"blocks\.(\d+)\.attn\.relative_position_bias_table", r"blocks.\1.attn.bias.table"),
)
_RECOMPUTED = re.compile(r"pos_embed|blocks\.\d+\.attn\.relative_position_index")


def convert_released_state_dict(released: dict[str, Tensor], config: LatentDiffiTConfig) -> dict[str, Tensor]:
    """The release's state dict renamed and re-laid-out for ``LatentDiffiT(config)``.

    Raises ValueError on a key it does not know, or on a saved position embedding or index that differs from
    the one ``config`` implies (a checkpoint for another resolution, say).
    """
    for key in filter(_RECOMPUTED.fullmatch, released):
        _check_recomputed(key, released[key], config)
    kept = {key: value for key, value in released.items() if not _RECOMPUTED.fullmatch(key)}
    return swap_time_sinusoid(rename_keys(kept, _RENAMES, "DiffiT"))


def rename_keys(released: dict[str, Tensor], renames: tuple[tuple[str, str], ...], name: str) -> dict[str, Tensor]:
    """Every key of ``released`` renamed by the first ``(pattern, target)`` whose pattern matches all of it;
    ValueError on a key that none matches (``name`` names the release in the message)."""
    converted: dict[str, Tensor] = {}
    for key, value in released.items():
        for pattern, target in renames:
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, target, key)] = value
                break
        else:
            raise ValueError(f"unexpected key {key!r} in the released {name} state dict")
    return converted


def swap_time_sinusoid(weights: dict[str, Tensor], key: str = "embed.mlp.0.weight") -> dict[str, Tensor]:
    """``weights`` with the input columns of the first time-MLP layer ``key`` swapped from a ``[cos, sin]``
    sinusoid (the DiT and DiffiT releases) to the package's ``[sin, cos]``."""
    if key not in weights:
        return weights
    cos, sin = weights[key].chunk(2, dim=1)
    return weights | {key: torch.cat([sin, cos], dim=1)}


def check_pos_embed(saved: Tensor, config: DiTConfig) -> None:
    """ValueError unless the release's fixed position embedding ``(1, N, dim)`` is the one ``config`` implies."""
    expected = sincos_pos_embed_2d(config.dim, config.grid)[None]
    if saved.shape != expected.shape:
        raise ValueError(
            f"the checkpoint's pos_embed has shape {tuple(saved.shape)}, this config's {tuple(expected.shape)}: the "
            "weights are for another resolution or width (pass the config of theirs, e.g. --config imagenet512/...)"
        )
    if not torch.allclose(saved.float(), expected, atol=1e-5):
        raise ValueError(f"the checkpoint's pos_embed is not the 2-D sin-cos embedding of a {config.grid}^2 grid")


def _check_recomputed(key: str, value: Tensor, config: LatentDiffiTConfig) -> None:
    if key == "pos_embed":
        check_pos_embed(value, config)
    elif not torch.equal(value.long(), relative_position_index(config.token_window)):
        raise ValueError(f"the checkpoint's {key} does not match this config's (grid {config.grid}, {config})")


def load_release(
    path: str | Path, net: nn.Module, convert: Callable[[dict[str, Tensor]], dict[str, Tensor]], name: str, fix: str
) -> nn.Module:
    """``net`` with the weights of the release file ``path`` (``.pt`` or ``.safetensors``) as ``convert`` maps
    them; every parameter must be matched. ``name`` names the release in errors, and ``fix`` says where to get it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name} checkpoint {str(path)!r} not found: {fix}")
    released = load_weights_file(path, f"a released {name} checkpoint", fix)
    load_weights(net, convert(released), path, fix=f"it is not the {name} release this config's network holds")
    return net


def load_released_diffit(path: str | Path, config: LatentDiffiTConfig) -> LatentDiffiT:
    """``LatentDiffiT(config)`` with the released weights of ``path`` (``diffit_256.safetensors`` with the
    ``imagenet256`` preset, ``diffit_512.safetensors`` with ``imagenet512``); every parameter must be matched."""
    fix = (
        "download diffit_256.safetensors or diffit_512.safetensors from https://huggingface.co/nvidia/DiffiT "
        "(linked from github.com/NVlabs/DiffiT) and pass the file's path"
    )
    net = LatentDiffiT(config)
    load_release(path, net, lambda released: convert_released_state_dict(released, config), "DiffiT", fix)
    return net
