"""One lookup table from a sampler's name to the sampler: what the configs' ``sample`` section, the command
line, the explorers, the comparison suite and the benchmarks all call.

A :class:`Sampler` is a name, a number of steps and that sampler's options (a dataclass per sampler, which is
also the ``sample`` section's schema): ``sampler(denoiser, noise, class_labels, generator) -> SamplerOutput``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from torch import Tensor

from diffbook.config.schema import parse_options
from diffbook.diffusion.denoiser import Denoiser
from diffbook.diffusion.edm import karras_sigmas
from diffbook.samplers.common import DenoiserFn, NoiseSource, SamplerOutput
from diffbook.samplers.consistency import SCHEDULES, consistency_sample, schedule_nfe
from diffbook.samplers.ddpm import ddim_sample, ddpm_sample
from diffbook.samplers.edm import edm_sample
from diffbook.samplers.guidance import GuidedDenoiser


@dataclass(frozen=True)
class GuidanceOptions:
    """Classifier-free guidance of the diffusion samplers: :class:`GuidedDenoiser`'s scale, power-cosine exponent,
    guided channels and rescale ``phi`` (Lin et al. 2024). ``cfg_scale`` unset or 1 is no guidance."""

    cfg_scale: float | None = None
    cfg_power: float | None = None
    cfg_channels: int | None = None
    cfg_rescale: float = 0.0

    def guided(self, denoiser: DenoiserFn, null_labels: Tensor | None = None) -> DenoiserFn:
        """``denoiser`` guided; the unconditional branch gets ``null_labels`` (None: the network's null class)."""
        if self.cfg_scale is None or self.cfg_scale == 1.0:
            return denoiser
        guided = cast(Denoiser, denoiser)  # guidance calls raw(): a Denoiser, or a guided one
        return GuidedDenoiser(guided, self.cfg_scale, self.cfg_rescale, null_labels, self.cfg_channels, self.cfg_power)


@dataclass(frozen=True)
class DDPMOptions(GuidanceOptions):
    """Ancestral DDPM (:func:`~diffbook.samplers.ddpm_sample`)."""

    variance: Literal["large", "small", "learned"] = "large"
    clip_denoised: float | None = None


@dataclass(frozen=True)
class DDIMOptions(GuidanceOptions):
    """DDIM (:func:`~diffbook.samplers.ddim_sample`); ``eta > 0`` adds fresh noise at every step."""

    eta: float = 0.0
    spacing: Literal["linspace", "leading", "trailing"] = "linspace"
    clip_denoised: float | None = None


@dataclass(frozen=True)
class EDMOptions(GuidanceOptions):
    """EDM's Euler or Heun (:func:`~diffbook.samplers.edm_sample`) on Karras levels; unset ``sigma_min`` and
    ``sigma_max`` take the process's range."""

    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float = 7.0
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = float("inf")
    S_noise: float = 1.0


@dataclass(frozen=True)
class ConsistencyOptions:
    """A consistency model's chains of noise levels; unset, ``SCHEDULES[steps]``, where ``steps`` is the NFE."""

    schedule: tuple[tuple[float, ...], ...] | None = None


@dataclass(frozen=True)
class Sampler:
    """A configured sampler: ``sampler(denoiser, noise, class_labels, generator) -> SamplerOutput``.

    ``noise: (B, ...)`` is standard normal. ``generator`` feeds the noise a stochastic sampler adds on the way:
    a ``torch.Generator`` or a per-row :class:`~diffbook.samplers.common.RowNoise`. DDPM's and DDIM's samplers walk
    a discrete schedule: the denoiser's ``process``, or ``process`` when given (an analytic denoiser has none).
    ``null_labels`` are guidance's unconditional condition when it is not the null class (the empty prompt's
    text embeddings).
    """

    name: str
    steps: int
    options: Any = field(default=None)

    def __post_init__(self) -> None:
        kind = _kind(self.name)
        if self.options is None:
            object.__setattr__(self, "options", kind.options())
        elif not isinstance(self.options, kind.options):
            raise TypeError(f"the {self.name} sampler takes {kind.options.__name__}, got {self.options!r}")
        if self.steps < 1:
            raise ValueError(f"sample.steps must be at least 1, got {self.steps}")
        options: Any = self.options
        if self.name == "consistency":
            _check_consistency_steps(self.steps, options.schedule)

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str = "sample") -> Sampler:
        """The sampler of a config's ``sample`` section: ``sampler``, ``steps`` and that sampler's options."""
        options = dict(section)
        name, steps = options.pop("sampler", None), options.pop("steps", None)
        _kind(name)
        if not isinstance(steps, int) or isinstance(steps, bool):
            raise ValueError(f"{where}.steps must be an integer, got {steps!r}")
        return cls(name, steps, parse_options(SAMPLERS[name].options, options, where))

    @property
    def needs_discrete_process(self) -> bool:
        """Whether the sampler walks DDPM's discrete schedule (``process.kind = ddpm``)."""
        return SAMPLERS[self.name].discrete

    @property
    def stochastic(self) -> bool:
        """Whether the sampler draws noise after the initial one (and so needs ``generator``)."""
        return SAMPLERS[self.name].stochastic(self)

    @property
    def nfe(self) -> int:
        """Network calls per sample: one per step, but two for each of Heun's steps except the last (to
        ``sigma = 0``, an Euler step); a consistency schedule's jumps. Guidance batches its two calls as one."""
        if self.name == "consistency":
            return schedule_nfe(self.schedule)
        return 2 * self.steps - 1 if self.name == "heun" else self.steps

    @property
    def schedule(self) -> tuple[tuple[float, ...], ...]:
        """The consistency sampler's chains of noise levels: its ``schedule`` option, else ``SCHEDULES[steps]``."""
        schedule = self.options.schedule or SCHEDULES[self.steps]
        return tuple(tuple(float(level) for level in chain) for chain in schedule)

    def __call__(
        self,
        denoiser: DenoiserFn,
        noise: Tensor,
        class_labels: Tensor | None = None,
        generator: NoiseSource = None,
        return_trajectory: bool = False,
        process: Any = None,
        null_labels: Tensor | None = None,
    ) -> SamplerOutput:
        if isinstance(self.options, GuidanceOptions):
            process = process or getattr(denoiser, "process", None)
            denoiser = self.options.guided(denoiser, null_labels)
        run = SAMPLERS[self.name].run
        return run(self, denoiser, noise, class_labels, generator, return_trajectory, process)


def _ddpm(sampler: Sampler, denoiser, noise, labels, generator, trajectory, process) -> SamplerOutput:
    o = sampler.options
    return ddpm_sample(
        denoiser, process or denoiser.process, noise, sampler.steps, variance=o.variance,
        class_labels=labels, clip_denoised=o.clip_denoised, generator=generator, return_trajectory=trajectory,
    )  # fmt: skip


def _ddim(sampler: Sampler, denoiser, noise, labels, generator, trajectory, process) -> SamplerOutput:
    o = sampler.options
    return ddim_sample(
        denoiser, process or denoiser.process, noise, sampler.steps, eta=o.eta, spacing=o.spacing,
        class_labels=labels, clip_denoised=o.clip_denoised, generator=generator, return_trajectory=trajectory,
    )  # fmt: skip


def _edm(sampler: Sampler, denoiser, noise, labels, generator, trajectory, process) -> SamplerOutput:
    o, process = sampler.options, process or denoiser.process
    sigmas = karras_sigmas(sampler.steps, o.sigma_min or process.sigma_min, o.sigma_max or process.sigma_max, o.rho)
    solver = cast(Literal["heun", "euler"], sampler.name)
    return edm_sample(
        denoiser, noise, sigmas, solver=solver, class_labels=labels, S_churn=o.S_churn, S_min=o.S_min,
        S_max=o.S_max, S_noise=o.S_noise, generator=generator, return_trajectory=trajectory,
    )  # fmt: skip


def _consistency(sampler: Sampler, model, noise, labels, generator, trajectory, process) -> SamplerOutput:
    return consistency_sample(model, noise, sampler.schedule, labels, generator, trajectory)


@dataclass(frozen=True)
class SamplerKind:
    """A sampler of the table: its options' dataclass, how it runs, whether it adds noise on the way, and whether
    it needs DDPM's discrete process."""

    options: type
    run: Callable[..., SamplerOutput]
    stochastic: Callable[[Sampler], bool]
    discrete: bool = False


SAMPLERS: dict[str, SamplerKind] = {
    "ddpm": SamplerKind(DDPMOptions, _ddpm, lambda s: True, discrete=True),
    "ddim": SamplerKind(DDIMOptions, _ddim, lambda s: s.options.eta > 0, discrete=True),
    "heun": SamplerKind(EDMOptions, _edm, lambda s: s.options.S_churn > 0),
    "euler": SamplerKind(EDMOptions, _edm, lambda s: s.options.S_churn > 0),
    # each chain after the first starts with fresh noise
    "consistency": SamplerKind(ConsistencyOptions, _consistency, lambda s: len(s.schedule) > 1),
}


def _kind(name: str) -> SamplerKind:
    if name not in SAMPLERS:
        raise ValueError(f"sample.sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")
    return SAMPLERS[name]


def _check_consistency_steps(steps: int, schedule: tuple[tuple[float, ...], ...] | None) -> None:
    # For the consistency sampler ``steps`` is its NFE: it picks one of SCHEDULES, or must match the schedule.
    if schedule is None and steps not in SCHEDULES:
        raise ValueError(
            f"sample.steps = {steps} has no default consistency schedule (NFE {list(SCHEDULES)}): give sample.schedule"
        )
    if schedule is not None and schedule_nfe(schedule) != steps:
        raise ValueError(f"sample.schedule makes {schedule_nfe(schedule)} network calls but sample.steps = {steps}")
