"""Files written whole or not at all, and the user's cache folder for downloaded weights, checked by SHA-256."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn


class CheckpointError(ValueError):
    """A weights file that torch cannot read, or that does not hold what it should; the message says what to do."""


def load_torch_file(path: Path, what: str, fix: str, *, mmap: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only``, which unpickles no code; ``mmap=True`` maps the file
    instead of reading it (a large file's config or step costs no weights read).

    A file torch cannot read (truncated, empty, not a torch file) raises CheckpointError: "PATH is corrupt or not
    WHAT (...); FIX". Torch's own message is not passed on: for a corrupt file it suggests loading with
    ``weights_only=False``, which would run whatever code the file holds.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError:
        raise
    except Exception as error:  # RuntimeError, EOFError, UnpicklingError or struct.error, by how the file is broken
        reason = f"torch cannot read it: {type(error).__name__}"
        raise CheckpointError(f"{path} is corrupt or not {what} ({reason}); {fix}") from None


def load_weights_file(path: Path, what: str, fix: str) -> dict[str, torch.Tensor]:
    """A released state dict on the CPU: a ``.safetensors`` file (NVlabs' DiffiT weights, say), else a torch file
    read by :func:`load_torch_file`. A file that cannot be read raises CheckpointError, as there."""
    if path.suffix != ".safetensors":
        return load_torch_file(path, what, fix)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except SafetensorError as error:
        raise CheckpointError(f"{path} is corrupt or not {what} (safetensors cannot read it: {error}); {fix}") from None


def load_weights(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    path: str | Path,
    fix: str = "load it with the config it was trained with",
) -> None:
    """``module.load_state_dict(weights)``, or one CheckpointError that counts what does not fit and names the
    first few keys, rather than torch's list of every key; ``fix`` ends it."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [key for key in expected if key in weights and weights[key].shape != expected[key].shape]
    problems = [
        f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for keys, what in ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape"))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{path} holds weights of another model: {'; '.join(problems)} of {len(expected)} keys; {fix}"
        )
    module.load_state_dict(weights)


def write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """``write(file)`` into ``path`` so that ``path`` is, at every moment, the old file or the new one, whole."""
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


def cache_dir() -> Path:
    """Where diffbook keeps downloaded weights: ``$DIFFBOOK_CACHE``, else ``$XDG_CACHE_HOME/diffbook``, else
    ``~/.cache/diffbook``. Made readable by its owner only, unlike a shared temporary folder."""
    root = (
        os.environ.get("DIFFBOOK_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffbook"
    )
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_to_cache(source: str, name: str, sha256_prefix: str = "") -> Path:
    """Copy ``source`` (a URL, or a file already downloaded) into the cache as ``name``, and record its SHA-256
    in ``name.sha256`` beside it, which :func:`cached_file` checks before every use.

    A file whose SHA-256 does not start with ``sha256_prefix`` (a release names its file by it) is refused with a
    ValueError, and the file cached before, if any, is kept."""
    path = cache_dir() / name
    digest = hashlib.sha256()

    def copy_checked(file: IO[bytes]) -> None:
        opened = urllib.request.urlopen(source) if "://" in source else open(source, "rb")  # noqa: SIM115
        with opened as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
                file.write(chunk)
        if not digest.hexdigest().startswith(sha256_prefix):
            raise ValueError(
                f"{source} has SHA-256 {digest.hexdigest()[:16]}..., not {sha256_prefix}... as {name} has: "
                "download it again"
            )

    write_atomically(path, copy_checked)
    write_atomically(_digest_path(path), lambda file: file.write(f"{digest.hexdigest()}  {name}\n".encode()))
    return path


def cached_file(name: str, fetch_command: str) -> Path:
    """The cached file ``name``, after checking it against the SHA-256 recorded when it was fetched.

    A missing file raises FileNotFoundError, and a file without a record, or that no longer matches it, raises
    ValueError; both name ``fetch_command``, which fetches it again.
    """
    path = cache_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {fetch_command}")
    if not _digest_path(path).is_file():
        raise ValueError(f"{path} has no recorded SHA-256 ({_digest_path(path).name}): {fetch_command}")
    recorded = _digest_path(path).read_text().split()[0]
    actual = sha256_of(path)
    if actual != recorded:
        raise ValueError(
            f"{path} has SHA-256 {actual[:16]}..., not the {recorded[:16]}... recorded when it was fetched: "
            f"the file changed since; {fetch_command}"
        )
    return path


def _digest_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")
