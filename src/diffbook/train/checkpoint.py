"""Checkpoints that survive a kill mid-write, and the global random states a bitwise resume needs."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: the file at ``path`` is the old checkpoint or the new one, whole."""
    _write_atomically(Path(path), lambda file: torch.save(state, file))


def copy_checkpoint(source: str | Path, destination: str | Path) -> None:
    """Copy a checkpoint atomically, so that a snapshot costs a file copy rather than a second serialisation."""
    with open(source, "rb") as src:
        _write_atomically(Path(destination), lambda file: shutil.copyfileobj(src, file))


class CheckpointError(ValueError):
    """A file that is not a whole diffbook checkpoint; the message names the file, what to do, and a good snapshot."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, on the CPU; ``weights_only`` unpickles no code.

    A file torch cannot read (truncated, empty, not a torch file) or that holds no ``model`` weights raises
    :class:`CheckpointError`. Torch's own message is not passed on: for a corrupt file it suggests
    ``weights_only=False``, which would run whatever code the file holds.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError or UnpicklingError, by how the file is broken
        raise CheckpointError(_unreadable(path, f"torch cannot read it: {type(error).__name__}")) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(_unreadable(path, "it holds no 'model' weights"))
    return state


def _unreadable(path: Path, reason: str) -> str:
    snapshots = sorted(path.parent.glob("checkpoint-*.pt"))
    fallback = (
        f"the newest snapshot beside it is {snapshots[-1]}: copy it to {path} to resume from there"
        if snapshots
        else "there is no snapshot beside it (train.keep_checkpoints=true keeps them): train the run again"
    )
    return f"{path} is corrupt or not a diffbook checkpoint ({reason}); {fallback}"


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


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    # One fixed temporary name beside the target: os.replace is atomic only within a file system, and a file
    # left by a killed writer is overwritten by the next save instead of piling up. Only rank 0 writes.
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename lives in the directory's entry table; without this a power cut can still undo it. POSIX only.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
