"""Execute the book's notebooks in place, as ``make notebooks`` and ``python -m diffbook notebooks`` do.

Notebooks are committed with the outputs of a ``book``-profile run, which the book renders without executing
anything. :func:`execute_notebook` produces those outputs: it runs a notebook top to bottom in a fresh kernel of
the interpreter that calls it, with progress bars off and figures inline, and refuses to let a path of this
machine slip into the saved outputs.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import nbformat
from ipykernel.kernelspec import RESOURCES, get_kernel_dict
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec
from nbclient import NotebookClient

from diffbook.profiles import ENV_VAR, PROFILES

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
NOTEBOOK_VERSION = 4


class _CurrentEnvKernelManager(AsyncKernelManager):
    """An IPython kernel running on this interpreter, whatever kernelspecs are installed on the machine.

    A kernelspec named ``python3`` in the user's Jupyter directory takes precedence over the one of the
    active environment and may point to another Python; notebooks must run where ``diffbook`` is installed.
    """

    @property
    def kernel_spec(self) -> KernelSpec:
        return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())


def kernel_env(profile: str) -> dict[str, str]:
    """This environment with the profile set, figures inline, and progress bars and debugger warnings off."""
    env = dict(os.environ)
    env[ENV_VAR] = profile
    env["TQDM_DISABLE"] = "1"
    env["MPLBACKEND"] = INLINE_BACKEND
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def machine_paths(notebook: Path) -> list[str]:
    """Absolute paths of this machine that must not appear in a committed notebook's outputs.

    They are the repository (the notebook's directory and its parent), the working directory, the home
    directory and the Python installation, whose paths warnings and tracebacks print.
    """
    directory = notebook.resolve().parent
    candidates = {directory, directory.parent, Path.cwd().resolve(), Path.home(), Path(sys.prefix)}
    return sorted(str(path) for path in candidates if path != Path(path.anchor))


def _strings(node: object) -> Iterator[str]:
    """Every string inside nested lists and dicts (a cell's outputs, as nbformat stores them)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def find_in_outputs(nb: nbformat.NotebookNode, needles: Iterable[str]) -> list[tuple[int, str]]:
    """``(cell index, needle)`` for every needle found in the outputs of a code cell."""
    needles = list(needles)
    hits: list[tuple[int, str]] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        texts = list(_strings(cell.outputs))
        hits.extend((index, needle) for needle in needles if any(needle in text for text in texts))
    return hits


def notebook_client(nb: nbformat.NotebookNode, path: Path, timeout: int, allow_errors: bool = False) -> NotebookClient:
    """A client that runs ``nb`` in a kernel of this interpreter, in the directory of ``path``."""
    return NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        kernel_manager_class=_CurrentEnvKernelManager,
        allow_errors=allow_errors,
        record_timing=False,
        extra_arguments=["--IPKernelApp.log_level=ERROR"],  # keeps the kernel's start-up warnings off the terminal
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )


def execute_notebook(path: str | Path, profile: str = "book", timeout: int = 900) -> float:
    """Run a notebook top to bottom in a fresh kernel and save it in place with its outputs.

    Args:
        path: the ``.ipynb`` file; its directory is the kernel's working directory.
        profile: the ``DIFFBOOK_PROFILE`` the kernel sees.
        timeout: seconds any single cell may run before execution is aborted.

    Returns:
        Wall-clock seconds the execution took.

    Raises:
        ValueError: for an unknown profile.
        nbclient.exceptions.CellExecutionError: if a cell raises; the notebook is left unchanged.
        RuntimeError: if an output contains an absolute path of this machine; the notebook is saved, so
            that the offending cells can be inspected, and must be fixed before it is committed.
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; valid profiles are {', '.join(PROFILES)}.")
    path = Path(path)
    nb = nbformat.read(path, as_version=NOTEBOOK_VERSION)
    client = notebook_client(nb, path, timeout)
    start = time.perf_counter()
    client.execute(env=kernel_env(profile))
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)

    leaks = find_in_outputs(nb, machine_paths(path))
    if leaks:
        cells = ", ".join(f"cell {index} shows {needle!r}" for index, needle in leaks)
        raise RuntimeError(f"{path}: outputs contain paths of this machine ({cells}); remove them and rerun.")
    return seconds


def expand_notebook_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories replaced by the ``*.ipynb`` files directly inside them, sorted."""
    notebooks: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            notebooks.extend(sorted(entry.glob("*.ipynb")))
        elif entry.suffix == ".ipynb" and entry.is_file():
            notebooks.append(entry)
        else:
            raise FileNotFoundError(f"{entry} is neither a notebook nor a directory.")
    return notebooks


def execute_notebooks(paths: Sequence[str | Path], profile: str = "book", timeout: int = 900) -> dict[Path, float]:
    """Execute notebooks one after the other, printing one line per notebook; returns seconds per notebook."""
    seconds: dict[Path, float] = {}
    for index, path in enumerate(map(Path, paths), start=1):
        print(f"[{index}/{len(paths)}] {path} ({profile}) ...", end=" ", flush=True)
        seconds[path] = execute_notebook(path, profile=profile, timeout=timeout)
        print(f"{seconds[path]:.1f} s", flush=True)
    return seconds
