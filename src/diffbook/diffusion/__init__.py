"""Noise processes, their parametrisations, and the denoiser wrapper that every sampler calls."""

from diffbook.diffusion.ddpm import DDPM, cosine_betas, linear_betas
from diffbook.diffusion.denoiser import Denoiser, Process
from diffbook.diffusion.edm import EDM, VE, VP
from diffbook.diffusion.parametrization import PREDICTIONS, append_dims, as_batch, convert, from_x0, to_x0

__all__ = [
    "DDPM",
    "EDM",
    "PREDICTIONS",
    "VE",
    "VP",
    "Denoiser",
    "Process",
    "append_dims",
    "as_batch",
    "convert",
    "cosine_betas",
    "from_x0",
    "linear_betas",
    "to_x0",
]
