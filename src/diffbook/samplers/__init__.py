"""Samplers: DDPM ancestral and DDIM on a discrete schedule; EDM's Euler and Heun on any denoiser."""

from diffbook.samplers.common import DenoiserFn, SamplerOutput
from diffbook.samplers.ddpm import ddim_sample, ddpm_sample, timesteps
from diffbook.samplers.edm import edm_sample, karras_sigmas

__all__ = [
    "DenoiserFn",
    "SamplerOutput",
    "ddim_sample",
    "ddpm_sample",
    "edm_sample",
    "karras_sigmas",
    "timesteps",
]
