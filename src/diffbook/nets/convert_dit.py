"""Load the released DiT weights (facebookresearch/DiT, e.g. ``DiT-XL-2-256x256.pt``) into
:class:`~diffbook.nets.dit.DiT`: the starting point of SADM's ImageNet fine-tuning.

The user supplies the file (a plain state dict); nothing is downloaded. As for DiffiT
(:mod:`~diffbook.nets.convert_diffit`) the mapping is one of names, plus the ``[cos, sin]`` order of the release's
timestep sinusoid; the fixed position embedding is recomputed from the config and checked against the saved one.
The layer norms have no parameters in either, and the label table has the null class as its last row in both.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from diffbook.nets.convert_diffit import (
    DIT_RELEASE_RENAMES,
    check_pos_embed,
    load_release,
    rename_keys,
    swap_time_sinusoid,
)
from diffbook.nets.dit import DiT, DiTConfig

_RENAMES: tuple[tuple[str, str], ...] = (
    *DIT_RELEASE_RENAMES,
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.1.\2"),
    (r"final_layer\.adaLN_modulation\.1\.(weight|bias)", r"final.modulation.1.\1"),
)


def convert_released_dit(released: dict[str, Tensor], config: DiTConfig) -> dict[str, Tensor]:
    """The release's state dict renamed and re-laid-out for ``DiT(config)``.

    Raises ValueError on a key it does not know, or on a saved position embedding that differs from the one
    ``config`` implies (a checkpoint for another resolution or patch size).
    """
    if "pos_embed" in released:
        check_pos_embed(released["pos_embed"], config)
    kept = {key: value for key, value in released.items() if key != "pos_embed"}
    return swap_time_sinusoid(rename_keys(kept, _RENAMES, "DiT"))


def load_released_dit(path: str | Path, config: DiTConfig) -> DiT:
    """``DiT(config)`` with the released weights of ``path`` (``DiT-XL-2-256x256.pt`` with the ``XL/2`` preset);
    every parameter must be matched."""
    fix = (
        "download it on a machine with internet from https://dl.fbaipublicfiles.com/DiT/models/ "
        "(DiT-XL-2-256x256.pt or DiT-XL-2-512x512.pt; linked from github.com/facebookresearch/DiT) and pass its path"
    )
    net = DiT(config)
    load_release(path, net, lambda released: convert_released_dit(released, config), "DiT", fix)
    return net
