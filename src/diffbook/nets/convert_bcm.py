"""Load the released BCM and BCM-deep ImageNet-64 weights (Mosasaur5526/BCM-iCT-torch) into
:class:`~diffbook.nets.adm_unet.ADMUNet`.

The user supplies the file, one of the release's EMA state dicts (``ema_0.99997_<step>.pt``); nothing is
downloaded. The network has the release's module names, so the keys load as they are; the checks here only
turn a wrong file or a wrong config into an error that says which. The release's iCT checkpoints have the same
format less the u-branch (``time_embed_end``, ``time_embed_align``): they load into the single-time network
(``network.overrides.two_times=false``).
"""

from __future__ import annotations

import re
from pathlib import Path

from torch import Tensor

from diffbook.nets.adm_unet import ADMUNet, ADMUNetConfig
from diffbook.nets.convert_diffit import load_release

_RELEASE_PAGE = "https://figshare.com/ndownloader/articles/27134694/versions/1?folder_path="
DOWNLOAD = (
    f"download the folder bcf_imagenet64_no32_qkv_4096 (BCM, {_RELEASE_PAGE}bcf_imagenet64_no32_qkv_4096) or "
    f"bcf_imagenet64_no32_qkv_deep_4096 (BCM-deep, {_RELEASE_PAGE}bcf_imagenet64_no32_qkv_deep_4096), linked "
    "from github.com/Mosasaur5526/BCM-iCT-torch, on a machine with internet, and pass the path of its "
    "ema_0.99997_<step>.pt"
)


def check_released_bcm(released: dict[str, Tensor], net: ADMUNet) -> dict[str, Tensor]:
    """``released`` unchanged if it fits ``net`` key for key and shape for shape; otherwise a ValueError that
    names the first key that does not, and the likely cause (BCM weights with the BCM-deep config, say)."""
    _check_depth(released, net.config)
    expected = net.state_dict()
    unexpected = [key for key in released if key not in expected]
    if unexpected:
        raise ValueError(f"unexpected key {unexpected[0]!r} in the released BCM state dict ({len(unexpected)} in all)")
    missing = [key for key in expected if key not in released]
    if missing and all(key.startswith(net.u_branch) for key in missing):
        raise ValueError(
            f"missing key {missing[0]!r}: a single-time (iCT) checkpoint; import it with "
            "network.overrides.two_times=false, or start BCM fine-tuning from it with network.init_from"
        )
    if missing:
        raise ValueError(f"missing key {missing[0]!r} in the released BCM state dict ({len(missing)} in all)")
    for key, value in released.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{key} has shape {tuple(value.shape)} in the checkpoint, {tuple(expected[key].shape)} in this "
                f"config's network: the weights are for other network.overrides ({net.config})"
            )
    return released


def _check_depth(released: dict[str, Tensor], config: ADMUNetConfig) -> None:
    """BCM and BCM-deep differ in blocks per level: a ValueError naming the config of the checkpoint's depth."""
    outputs = {int(m.group(1)) for key in released if (m := re.match(r"output_blocks\.(\d+)\.", key))}
    levels = len(config.channel_mult)
    if not outputs or (len(outputs) % levels):
        return  # not a layout to diagnose here: the key checks name what is wrong
    depth = len(outputs) // levels - 1
    if depth != config.num_res_blocks:
        config_name = {3: "imagenet64/bcm", 6: "imagenet64/bcm_deep"}.get(depth, f"num_res_blocks={depth}")
        raise ValueError(
            f"the checkpoint has {depth} residual blocks per level, this config {config.num_res_blocks} "
            f"(BCM has 3, BCM-deep 6): pass --config {config_name}"
        )


def load_released_bcm(path: str | Path, config: ADMUNetConfig) -> ADMUNet:
    """``ADMUNet(config)`` with the released weights of ``path`` (BCM's with the ``bcm_imagenet64`` preset,
    BCM-deep's with ``bcm_deep_imagenet64``); every parameter must be matched."""
    net = ADMUNet(config)
    load_release(path, net, lambda released: check_released_bcm(released, net), "BCM", DOWNLOAD)
    return net
