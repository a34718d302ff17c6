"""Run profiles: one environment variable picks the scale of every notebook and script.

- ``quick``: CI smoke runs; every notebook in well under a minute on 2 CPU cores.
- ``book`` (default): what the published book shows; minutes per notebook on a laptop CPU.
- ``full``: GPU scale, the papers' datasets and settings.

Notebooks and scripts never read ``DIFFBOOK_PROFILE`` themselves; they call :func:`pick`.
"""

from __future__ import annotations

import os
import random
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("quick", "book", "full")
ENV_VAR = "DIFFBOOK_PROFILE"
DEFAULT_PROFILE = "book"

T = TypeVar("T")


def current_profile() -> str:
    """The active profile: ``$DIFFBOOK_PROFILE``, or ``book`` when unset or empty."""
    name = os.environ.get(ENV_VAR, "").strip().lower() or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ValueError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not a profile; valid profiles are {', '.join(PROFILES)}."
        )
    return name


def pick(*, quick: T, book: T, full: T | None = None) -> T:
    """The value for the active profile; ``full`` falls back to ``book`` when not given.

    Example: ``steps = pick(quick=200, book=5_000, full=100_000)``.
    """
    values = {"quick": quick, "book": book, "full": book if full is None else full}
    return values[current_profile()]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
