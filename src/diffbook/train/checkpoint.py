"""Checkpoints that survive a kill mid-write, and the global random states a bitwise resume needs."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffbook.runtime.files import CheckpointError, load_torch_file, write_atomically


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: the file at ``path`` is the old checkpoint or the new one, whole."""
    write_atomically(Path(path), lambda file: torch.save(state, file))


def copy_checkpoint(source: str | Path, destination: str | Path) -> None:
    """Copy a checkpoint atomically, so that a snapshot costs a file copy rather than a second serialisation."""
    with open(source, "rb") as src:
        write_atomically(Path(destination), lambda file: shutil.copyfileobj(src, file))


def load_checkpoint(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (read by :func:`~diffbook.runtime.files.load_torch_file`).

    A file torch cannot read, or that holds no ``model`` weights, raises :class:`CheckpointError`, whose message
    names the newest snapshot beside it when there is one.
    """
    path = Path(path)
    state = load_torch_file(path, "a diffbook checkpoint", _fallback(path), mmap=mmap)
    if not isinstance(state, dict) or "model" not in state:
        reason = "it holds no 'model' weights"
        raise CheckpointError(f"{path} is corrupt or not a diffbook checkpoint ({reason}); {_fallback(path)}")
    return state


def _fallback(path: Path) -> str:
    snapshots = sorted(path.parent.glob("checkpoint-*.pt"))
    if snapshots:
        return f"the newest snapshot beside it is {snapshots[-1]}: copy it to {path} to resume from there"
    return "there is no snapshot beside it (train.keep_checkpoints=true keeps them): train the run again"


def rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (and the current GPU's, once in use)."""
    numpy_state = np.random.get_state(legacy=True)
    if isinstance(numpy_state, dict):  # legacy=True gives a tuple unless the global bit generator is not MT19937
        raise TypeError("NumPy's global generator is not MT19937, so its state is not the legacy tuple")
    name, keys, position, has_gauss, cached_gaussian = numpy_state
    return {
        "python": random.getstate(),
        # As plain ints, so that loading needs no NumPy globals and stays weights_only.
        "numpy": (name, keys.tolist(), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`."""
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"])
