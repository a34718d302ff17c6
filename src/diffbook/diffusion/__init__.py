"""Noise processes, their parametrisations, and the denoiser wrapper that every sampler calls."""

from diffbook.diffusion.consistency import BCMProcess, BidirectionalConsistency
from diffbook.diffusion.ddpm import (
    DDPM,
    betas_from_alpha_bar,
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)
from diffbook.diffusion.denoiser import Denoiser, Process, vp_scalings
from diffbook.diffusion.edm import EDM, VE, VP, karras_grid, karras_sigmas
from diffbook.diffusion.parametrization import (
    PREDICTIONS,
    append_dims,
    as_batch,
    convert,
    from_x0,
    to_x0,
    vp_coefficients,
)

__all__ = [
    "DDPM",
    "EDM",
    "PREDICTIONS",
    "VE",
    "VP",
    "BCMProcess",
    "BidirectionalConsistency",
    "Denoiser",
    "Process",
    "append_dims",
    "as_batch",
    "betas_from_alpha_bar",
    "convert",
    "cosine_betas",
    "from_x0",
    "karras_grid",
    "karras_sigmas",
    "linear_betas",
    "rescale_zero_terminal_snr",
    "scaled_linear_betas",
    "to_x0",
    "vp_coefficients",
    "vp_scalings",
]
