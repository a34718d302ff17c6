"""Samplers for a (bidirectional) consistency model ``f(x, t, u)``: generation, inversion, reconstruction.

A *schedule* is a list of *chains*, each a list of noise levels. Within a chain every consecutive pair
``(a, b)`` is one network call, the jump ``x <- f(x, a, b)``, down or up. Between chains the state is re-noised
from the level the last chain ended at to the first level of the next, by adding
``sqrt(next^2 - current^2) z`` with fresh ``z``: the only randomness after the initial noise. The number of
network evaluations (NFE) is the number of jumps.

The four generation schedules of the authors' ImageNet-64 script (Li & He 2024; ``BCM/scripts/image_sample.py``):

==========  ====  ==========================================================
one-step    1     80 -> 0.002
ancestral   2     80 -> 2.4 -> 0.002 (any decreasing chain; no fresh noise)
zigzag      3     80 -> 0.002; noise to 0.1; 0.1 -> 1.2 -> 0.002
mixed       4     80 -> 3.0 -> 0.002; noise to 0.12; 0.12 -> 0.4 -> 0.002
==========  ====  ==========================================================

In zigzag the network itself carries the small added noise up to 1.2 along the ODE (an inversion), which keeps
the sample's content and refines its details. Inversion starts from clean data (level 0), adds ``0.07 z`` and
jumps up: ``0.07 -> 80`` (1 NFE) or ``0.07 -> 15 -> 80`` (2 NFE); 0.07 rather than 0.002 because training
rarely visits levels as low as 0.002 (lognormal ``ln sigma ~ N(-1.1, 2^2)``).

Where the authors add ``0.1 z`` to a sample at 0.002, this module adds ``sqrt(0.1^2 - 0.002^2) z``, which lands
exactly at 0.1; the two differ by 0.02 % of the noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffbook.diffusion.consistency import BidirectionalConsistency
from diffbook.samplers.common import SamplerOutput, TrajectoryRecorder, randn_like

Chain = Sequence[float]
Schedule = Sequence[Chain]

SCHEDULES: dict[int, tuple[tuple[float, ...], ...]] = {
    1: ((80.0, 0.002),),
    2: ((80.0, 2.4, 0.002),),
    3: ((80.0, 0.002), (0.1, 1.2, 0.002)),
    4: ((80.0, 3.0, 0.002), (0.12, 0.4, 0.002)),
}
"""The authors' ImageNet-64 generation schedules by NFE: one-step, ancestral, zigzag, mixed."""

INVERSIONS: dict[int, tuple[float, ...]] = {1: (0.07, 80.0), 2: (0.07, 15.0, 80.0)}
"""The authors' ImageNet-64 inversion chains by NFE, from clean data."""


MULTISTEP_LEVELS: dict[int, tuple[float, ...]] = {
    1: (80.0,),
    2: (80.0, 2.4),
    3: (80.0, 1.2, 0.1),
    4: (80.0, 3.0, 0.4, 0.12),
}
"""For each NFE, the levels above ``sigma_min`` that :data:`SCHEDULES` visits, from the top: where a consistency
model's own multistep sampler (:func:`multistep_schedule`) restarts, for a like-for-like comparison."""


def multistep_schedule(levels: Sequence[float], sigma_min: float = 0.002) -> tuple[tuple[float, float], ...]:
    """A consistency model's multistep sampler (Song et al. 2023, Algorithm 1) as a schedule: from each of the
    decreasing ``levels`` one jump to ``sigma_min``, re-noising to the next level in between. NFE = ``len(levels)``.

    Every jump ends at ``sigma_min``, the only end a consistency model is trained for; a BCM's chains jump between
    intermediate levels too, without fresh noise.
    """
    if any(b >= a for a, b in zip(levels[:-1], levels[1:], strict=True)) or min(levels, default=0.0) <= sigma_min:
        raise ValueError(f"levels must decrease and stay above sigma_min = {sigma_min}, got {list(levels)}")
    return tuple((float(level), sigma_min) for level in levels)


def inversion_chain(nfe: int, start: float = 0.07, end: float = 80.0) -> tuple[float, ...]:
    """The inversion chain of ``nfe`` jumps from ``start`` up to ``end``: the authors' :data:`INVERSIONS` at 1 and
    2 NFE (with their default ends), otherwise ours, levels uniform in ``ln sigma``."""
    if nfe in INVERSIONS and (start, end) == (0.07, 80.0):
        return INVERSIONS[nfe]
    if nfe < 1:
        raise ValueError(f"an inversion needs at least one jump, got nfe={nfe}")
    return tuple(torch.linspace(math.log(start), math.log(end), nfe + 1, dtype=torch.float64).exp().tolist())


def schedule_nfe(schedule: Schedule) -> int:
    """The number of network calls a schedule makes: its jumps."""
    return sum(len(chain) - 1 for chain in schedule)


def check_schedule(schedule: Schedule, start_level: float) -> None:
    """Raise ValueError unless every level is positive, every chain has a jump, and every chain starts at or
    above the level the state is at then (noise can be added, not removed)."""
    if not schedule:
        raise ValueError("a schedule needs at least one chain")
    level = start_level
    for k, chain in enumerate(schedule):
        if len(chain) < 2:
            raise ValueError(f"chain {k} of the schedule, {list(chain)}, has no jump: it needs two levels or more")
        if min(chain) <= 0:
            raise ValueError(f"noise levels must be positive, chain {k} is {list(chain)}")
        if chain[0] < level:
            raise ValueError(
                f"chain {k} starts at {chain[0]}, below the level {level} the state is at: noise cannot be removed "
                "by re-noising; make that a jump inside the previous chain"
            )
        level = chain[-1]


@torch.no_grad()
def run_schedule(
    model: BidirectionalConsistency,
    x: Tensor,
    schedule: Schedule,
    start_level: float = 0.0,
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SamplerOutput:
    """Carry ``x: (B, ...)``, a state at noise level ``start_level`` (0: clean data), through ``schedule``.

    Each chain is first reached by adding noise (none when it starts where the state is), then walked by
    network jumps. Returns the final state, at the last chain's last level, and NFE = number of jumps.
    """
    check_schedule(schedule, start_level)
    record = TrajectoryRecorder(return_trajectory)
    level, nfe = start_level, 0
    for chain in schedule:
        if chain[0] > level:
            x = x + (chain[0] ** 2 - level**2) ** 0.5 * randn_like(x, generator)
        for start, end in zip(chain[:-1], chain[1:], strict=True):
            record(x, start)
            x = model(x, start, end, class_labels)
            nfe += 1
        level = chain[-1]
    record(x, level)
    return record.output(x, nfe)


def consistency_sample(
    model: BidirectionalConsistency,
    noise: Tensor,
    schedule: Schedule = SCHEDULES[1],
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> SamplerOutput:
    """Generate from ``noise: (B, ...)`` standard normal: ``x = schedule[0][0] * noise``, then the schedule.

    ``schedule``: one of :data:`SCHEDULES` or any other; ``generator`` feeds the re-noising between chains.
    """
    if not schedule or not schedule[0]:
        raise ValueError("a schedule needs at least one chain with levels")
    start = schedule[0][0]
    return run_schedule(model, start * noise, schedule, start, class_labels, generator, return_trajectory)


def invert(
    model: BidirectionalConsistency,
    x0: Tensor,
    levels: Chain = INVERSIONS[2],
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SamplerOutput:
    """The latent of clean data ``x0: (B, ...)``: add ``levels[0] z``, then jump up through ``levels``.

    ``samples`` is the state at ``levels[-1]`` divided by ``levels[-1]``: the ``noise`` that
    :func:`consistency_sample` takes, so that generating from it reconstructs ``x0``. NFE = ``len(levels) - 1``.
    """
    out = run_schedule(model, x0, [levels], 0.0, class_labels, generator)
    return SamplerOutput(out.samples / levels[-1], out.nfe)


def reconstruct(
    model: BidirectionalConsistency,
    x0: Tensor,
    inversion: Chain = INVERSIONS[2],
    schedule: Schedule = SCHEDULES[1],
    class_labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SamplerOutput:
    """Invert ``x0: (B, ...)`` through ``inversion``, then generate back with ``schedule``, which must start at
    ``inversion[-1]``. NFE counts both."""
    if schedule[0][0] != inversion[-1]:
        raise ValueError(f"the schedule starts at {schedule[0][0]}, not where the inversion ends ({inversion[-1]})")
    latent = invert(model, x0, inversion, class_labels, generator)
    out = consistency_sample(model, latent.samples, schedule, class_labels, generator)
    return SamplerOutput(out.samples, latent.nfe + out.nfe)
