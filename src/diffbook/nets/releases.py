"""The released weights the package can import or build on, and the licence of each. NOTICE lists the same.

A model trained from non-commercial weights is non-commercial too: importers record the licence in the
checkpoint they write, and a run fine-tuned from it records it again in its own checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    name: str
    source: str
    licence: str
    non_commercial: bool

    def notice(self) -> str:
        """One line for the user: what the weights are, their licence, and what follows from it."""
        use = "non-commercial use only; a model trained from them inherits that" if self.non_commercial else "see it"
        return f"the {self.name} weights ({self.source}) are licensed {self.licence}: {use}"


RELEASES = {
    "dit": Release("DiT-XL/2", "facebookresearch/DiT", "CC BY-NC 4.0", non_commercial=True),
    "diffit": Release("latent DiffiT", "NVlabs/DiffiT", "NVIDIA Source Code License-NC", non_commercial=True),
    "bcm": Release("BCM and BCM-deep (ImageNet 64)", "Mosasaur5526/BCM-iCT-torch", "MIT", non_commercial=False),
    "stable_diffusion": Release(
        "Stable Diffusion 2.1-base", "stabilityai/stable-diffusion-2-1-base", "CreativeML Open RAIL++-M", False
    ),
    "sd_vae": Release("SD VAE (ft-EMA)", "stabilityai/sd-vae-ft-ema", "MIT", non_commercial=False),
}
