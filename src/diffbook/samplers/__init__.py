"""Samplers: DDPM ancestral and DDIM on a discrete schedule; EDM's Euler and Heun on any denoiser; jumps of a
(bidirectional) consistency model; one table from a sampler's name to it, and one seeded loop over them."""

from diffbook.samplers.common import DenoiserFn, NoiseSource, RowNoise, SamplerOutput
from diffbook.samplers.consistency import (
    INVERSIONS,
    MULTISTEP_LEVELS,
    SCHEDULES,
    consistency_sample,
    inversion_chain,
    invert,
    multistep_schedule,
    reconstruct,
    run_schedule,
    schedule_nfe,
)
from diffbook.samplers.ddpm import ancestral_variance, ddim_sample, ddpm_sample, timesteps
from diffbook.samplers.edm import edm_sample, ode_flow
from diffbook.samplers.guidance import GuidedDenoiser, guide, power_cosine_scale
from diffbook.samplers.registry import (
    SAMPLERS,
    ConsistencyOptions,
    DDIMOptions,
    DDPMOptions,
    EDMOptions,
    GuidanceOptions,
    Sampler,
)
from diffbook.samplers.seeded import generate, sample_count, sample_seeds, seed_generators

__all__ = [
    "SAMPLERS",
    "ConsistencyOptions",
    "DDIMOptions",
    "DDPMOptions",
    "EDMOptions",
    "GuidanceOptions",
    "NoiseSource",
    "RowNoise",
    "Sampler",
    "generate",
    "sample_count",
    "sample_seeds",
    "seed_generators",
    "INVERSIONS",
    "MULTISTEP_LEVELS",
    "SCHEDULES",
    "DenoiserFn",
    "GuidedDenoiser",
    "SamplerOutput",
    "ancestral_variance",
    "consistency_sample",
    "ddim_sample",
    "ddpm_sample",
    "edm_sample",
    "guide",
    "inversion_chain",
    "invert",
    "multistep_schedule",
    "ode_flow",
    "power_cosine_scale",
    "reconstruct",
    "run_schedule",
    "schedule_nfe",
    "timesteps",
]
