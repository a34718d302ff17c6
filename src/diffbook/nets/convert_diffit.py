"""Load the officially released latent DiffiT weights (NVlabs/DiffiT, Hugging Face ``nvidia/DiffiT``) into
:class:`~diffbook.nets.diffit.LatentDiffiT`.

The user supplies the checkpoint file (a plain state dict, as the release's ``sample.py`` loads it); nothing is
downloaded. The mapping is one of names, plus two layout facts:

- the release's timestep sinusoid is ``[cos, sin]`` and the package's ``[sin, cos]``, so the columns of the first
  time-MLP layer swap halves;
- its fixed position embedding and relative-position index are saved tensors, here recomputed from the config;
  the converter checks that they agree, which pins the token and table layouts.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from diffbook.nets.diffit import LatentDiffiT, LatentDiffiTConfig, relative_position_index
from diffbook.nets.transformer import sincos_pos_embed_2d

# Released name (a regular expression on the whole key) -> the package's name.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"x_embedder\.proj\.(weight|bias)", r"patch.proj.\1"),
    (r"t_embedder\.mlp\.([02])\.(weight|bias)", r"embed.mlp.\1.\2"),
    (r"y_embedder\.embedding_table\.weight", r"embed.label.weight"),
    (r"blocks\.(\d+)\.attn\.qkv_temb\.(weight|bias)", r"blocks.\1.attn.time_qkv.\2"),
    (r"blocks\.(\d+)\.attn\.relative_position_bias_table", r"blocks.\1.attn.bias.table"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"final_layer\.linear\.(weight|bias)", r"final.linear.\1"),
)
_RECOMPUTED = re.compile(r"pos_embed|blocks\.\d+\.attn\.relative_position_index")


def convert_released_state_dict(released: dict[str, Tensor], config: LatentDiffiTConfig) -> dict[str, Tensor]:
    """The release's state dict renamed and re-laid-out for ``LatentDiffiT(config)``.

    Raises ValueError on a key it does not know, or on a saved position embedding or index that differs from
    the one ``config`` implies (a checkpoint for another resolution, say).
    """
    converted: dict[str, Tensor] = {}
    for key, value in released.items():
        if _RECOMPUTED.fullmatch(key):
            _check_recomputed(key, value, config)
            continue
        for pattern, target in _RENAMES:
            if re.fullmatch(pattern, key):
                converted[re.sub(pattern, target, key)] = value
                break
        else:
            raise ValueError(f"unexpected key {key!r} in the released DiffiT state dict")
    first = converted.get("embed.mlp.0.weight")
    if first is not None:  # [cos, sin] -> [sin, cos] on the input side of the first time-MLP layer
        cos, sin = first.chunk(2, dim=1)
        converted["embed.mlp.0.weight"] = torch.cat([sin, cos], dim=1)
    return converted


def _check_recomputed(key: str, value: Tensor, config: LatentDiffiTConfig) -> None:
    if key == "pos_embed":
        expected = sincos_pos_embed_2d(config.dim, config.grid)[None]
        agrees = value.shape == expected.shape and torch.allclose(value.float(), expected, atol=1e-5)
    else:
        expected = relative_position_index(config.token_window)
        agrees = torch.equal(value.long(), expected)
    if not agrees:
        raise ValueError(f"the checkpoint's {key} does not match this config's (grid {config.grid}, {config})")


def load_released_diffit(path: str | Path, config: LatentDiffiTConfig) -> LatentDiffiT:
    """``LatentDiffiT(config)`` with the released weights of ``path`` (e.g. the ImageNet-256 checkpoint with the
    ``imagenet256`` preset); every parameter must be matched (strict loading)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"DiffiT checkpoint {str(path)!r} not found: download the released weights from the Hugging Face "
            "repository nvidia/DiffiT (linked from github.com/NVlabs/DiffiT) and pass the file's path"
        )
    released = torch.load(path, map_location="cpu", weights_only=True)
    net = LatentDiffiT(config)
    net.load_state_dict(convert_released_state_dict(released, config))
    return net
