"""Samplers: DDPM ancestral and DDIM on a discrete schedule; EDM's Euler and Heun on any denoiser; jumps of a
(bidirectional) consistency model."""

from diffbook.samplers.common import DenoiserFn, SamplerOutput
from diffbook.samplers.consistency import (
    INVERSIONS,
    SCHEDULES,
    consistency_sample,
    invert,
    reconstruct,
    run_schedule,
    schedule_nfe,
)
from diffbook.samplers.ddpm import ddim_sample, ddpm_sample, timesteps
from diffbook.samplers.edm import edm_sample, karras_sigmas
from diffbook.samplers.guidance import GuidedDenoiser, guide

__all__ = [
    "INVERSIONS",
    "SCHEDULES",
    "DenoiserFn",
    "GuidedDenoiser",
    "SamplerOutput",
    "consistency_sample",
    "ddim_sample",
    "ddpm_sample",
    "edm_sample",
    "guide",
    "invert",
    "karras_sigmas",
    "reconstruct",
    "run_schedule",
    "schedule_nfe",
    "timesteps",
]
