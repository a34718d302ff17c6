"""A run folder's config: recorded only once it is valid, and compared with the stored one before a run goes on.

A run folder holds ``config.yaml`` and ``checkpoint.pt``, whose ``config`` entry is the resolved config the run
was trained with. Training in a folder that holds a run checks the new config against the stored one first:
a change that alters what the run learns (the data, the network, the objective, the learning rate, the seed...)
is refused unless it is accepted explicitly, so that a resumed run is the run its folder says it is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffbook.config import Config, read_config
from diffbook.experiments.experiment import Experiment
from diffbook.train.checkpoint import load_checkpoint, write_atomically

# What a resume may change: bookkeeping (when to log, save and sample), how sampling is done, and how long to train.
RESUMABLE_KEYS = frozenset(
    {
        "source",
        "sample",
        "train.steps",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.sample_every",
        "train.finite_check_every",
        "train.num_workers",
    }
)


@dataclass(frozen=True)
class StoredRun:
    """What a run folder holds: its config (from the checkpoint, else ``config.yaml``) and the steps trained."""

    config: Config
    step: int


def stored_run(run_dir: str | Path) -> StoredRun | None:
    """The run in ``run_dir``, or None for a new folder. A corrupt checkpoint raises CheckpointError."""
    run_dir = Path(run_dir)
    checkpoint, saved = run_dir / "checkpoint.pt", run_dir / "config.yaml"
    state = load_checkpoint(checkpoint, mmap=True) if checkpoint.exists() else None
    if state is not None and state.get("config") is not None:
        return StoredRun(state["config"], state["step"])
    if saved.exists():
        return StoredRun(read_config(saved), state["step"] if state is not None else 0)
    return None


def config_changes(
    stored: Mapping[str, Any], new: Mapping[str, Any], allowed: frozenset[str] = RESUMABLE_KEYS
) -> list[str]:
    """``key: old -> new`` for every value that differs between two configs, outside ``allowed`` (dotted keys,
    a section's name covering the whole section)."""
    old_values, new_values = dict(_leaves(stored)), dict(_leaves(new))
    return [
        f"{key}: {_shown(old_values, key)} -> {_shown(new_values, key)}"
        for key in sorted(old_values.keys() | new_values.keys())
        if old_values.get(key) != new_values.get(key) and not _covered(key, allowed)
    ]


SHOWN_CHANGES = 6  # a whole other config differs in dozens of keys; the first few say which run it is
RESUME_FIX = "choose another --run-dir, or pass --accept-changes to train that run on with this config"


def claim_run_dir(
    run_dir: str | Path,
    experiment: Experiment,
    *,
    accept_changes: bool = False,
    record: bool = True,
    allowed: frozenset[str] = RESUMABLE_KEYS,
    fix: str = RESUME_FIX,
) -> int:
    """Record ``experiment``'s config in ``run_dir`` after checking it against the run stored there; returns
    the steps that run has already taken (0 for a new folder). A run already at ``train.steps`` or past them is
    left as it is. ``record=False`` checks without writing (the other ranks under ``torchrun``).

    Raises ValueError (ending with ``fix``), before anything is written, when the stored run was trained with a
    config that differs outside the ``allowed`` keys, unless ``accept_changes``.
    """
    run_dir = Path(run_dir)
    stored = stored_run(run_dir)
    if stored is not None and not accept_changes:
        changes = config_changes(stored.config, experiment.config, allowed)
        if changes:
            raise ValueError(f"{run_dir} holds a run of another config ({_listed(changes)}): {fix}")
    step = stored.step if stored is not None else 0
    if record and step < experiment.train.steps:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(run_dir / "config.yaml", lambda file: file.write(experiment.to_yaml().encode()))
    return step


def _listed(changes: list[str]) -> str:
    more = len(changes) - SHOWN_CHANGES
    return "; ".join(changes[:SHOWN_CHANGES]) + (f"; and {more} more" if more > 0 else "")


def _leaves(config: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _shown(values: Mapping[str, Any], key: str) -> str:
    return repr(values[key]) if key in values else "(unset)"


def _covered(key: str, allowed: frozenset[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:end]) in allowed for end in range(1, len(parts) + 1))
