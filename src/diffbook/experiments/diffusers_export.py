"""A trained Stable Diffusion U-Net as diffusers loads it: ``unet/`` and a ``scheduler/`` that samples as the
run's config does (``python -m diffbook export-diffusers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffbook.experiments.experiment import Experiment, Model

PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def scheduler_config(experiment: Experiment) -> dict[str, Any]:
    """diffusers' ``DDIMScheduler`` settings of the experiment's DDPM process and DDIM sampler."""
    process, sampler = experiment.process, experiment.sampler
    if experiment.config["process"]["kind"] != "ddpm" or sampler.name != "ddim":
        raise ValueError("export-diffusers writes a DDIM scheduler: the run needs process.kind ddpm, sampler ddim")
    return dict(
        num_train_timesteps=process.T,
        beta_schedule=process.schedule,
        beta_start=process.beta_start,
        beta_end=process.beta_end,
        prediction_type=PREDICTION_TYPES[process.prediction],
        rescale_betas_zero_snr=process.zero_terminal_snr,
        timestep_spacing=sampler.options.spacing,
        steps_offset=1,
        set_alpha_to_one=True,
        clip_sample=False,
    )


def export_for_diffusers(experiment: Experiment, model: Model, out: str | Path) -> Path:
    """Write ``out/unet`` (diffusers format) and ``out/scheduler``; returns ``out``."""
    from diffusers import DDIMScheduler

    unet = getattr(model.net, "unet", None)
    if unet is None:
        raise ValueError(f"export-diffusers needs a network.kind stable_diffusion run, got {experiment.network.kind!r}")
    out = Path(out)
    unet.save_pretrained(out / "unet")
    scheduler: Any = DDIMScheduler(**scheduler_config(experiment))  # diffusers' mixins are untyped here
    scheduler.save_pretrained(out / "scheduler")
    return out
