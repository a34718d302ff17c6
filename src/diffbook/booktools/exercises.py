"""Exercises: the students' copies of the notebooks, and grading a notebook's exercises.

Exercises are written as solutions between two marker lines::

    # BEGIN SOLUTION
    loss = (eps - eps_hat).pow(2).mean()
    # END SOLUTION

:func:`student_copy` replaces each marked block by a stub that raises ``NotImplementedError`` and drops every
output, so that the cell that follows, whose first line is ``# CHECK``, fails until the student has filled it in.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from diffbook.booktools.runner import NOTEBOOK_VERSION, expand_notebook_paths, kernel_env, notebook_client

BEGIN_SOLUTION = "# BEGIN SOLUTION"
END_SOLUTION = "# END SOLUTION"
CHECK_MARKER = "# CHECK"
STUB = "# YOUR CODE HERE"
STUB_ERROR = 'raise NotImplementedError("Replace this line with your solution.")'
HIDE_INPUT = "hide-input"


def solution_blocks(source: str) -> list[tuple[int, int]]:
    """Line indices ``(begin, end)`` of each ``# BEGIN SOLUTION`` / ``# END SOLUTION`` pair in a cell.

    Raises:
        ValueError: if the markers are unbalanced or nested.
    """
    blocks = []
    begin: int | None = None
    for number, line in enumerate(source.splitlines()):
        marker = line.strip()
        if marker == BEGIN_SOLUTION:
            if begin is not None:
                raise ValueError(
                    f"line {number + 1}: {BEGIN_SOLUTION!r} inside the solution opened on line {begin + 1}"
                )
            begin = number
        elif marker == END_SOLUTION:
            if begin is None:
                raise ValueError(f"line {number + 1}: {END_SOLUTION!r} without a {BEGIN_SOLUTION!r} before it")
            blocks.append((begin, number))
            begin = None
    if begin is not None:
        raise ValueError(f"line {begin + 1}: {BEGIN_SOLUTION!r} is never closed by {END_SOLUTION!r}")
    return blocks


def strip_solutions(source: str) -> str:
    """The cell's source with each marked solution replaced by a stub at the marker's indentation."""
    lines = source.splitlines()
    kept: list[str] = []
    position = 0
    for begin, end in solution_blocks(source):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        kept.extend(lines[position:begin])
        kept.extend([indent + STUB, indent + STUB_ERROR])
        position = end + 1
    kept.extend(lines[position:])
    return "\n".join(kept)


def student_copy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of a solution notebook for students: solutions stubbed out, all outputs dropped.

    Lines outside the markers are kept verbatim, so the setup and the ``# CHECK`` cells survive unchanged.
    Exercise cells lose their ``hide-input`` tag, which only serves the rendered book.

    Raises:
        ValueError: naming the cell, if a cell's solution markers are unbalanced.
    """
    copy = nbformat.from_dict(nb)
    for index, cell in enumerate(copy.cells):
        if cell.cell_type != "code":
            continue
        try:
            has_solution = bool(solution_blocks(cell.source))
        except ValueError as error:
            raise ValueError(f"cell {index}: {error}") from None
        if has_solution:
            cell.source = strip_solutions(cell.source)
            tags = [tag for tag in cell.metadata.get("tags", []) if tag != HIDE_INPUT]
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        cell.outputs = []
        cell.execution_count = None
    return copy


def write_student_copies(src_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the student copy of every notebook in ``src_dir`` to ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in expand_notebook_paths([src_dir]):
        nb = nbformat.read(source, as_version=NOTEBOOK_VERSION)
        try:
            copy = student_copy(nb)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        target = out_dir / source.name
        nbformat.write(copy, target)
        written.append(target)
    return written


def grade(path: str | Path, profile: str = "quick", timeout: int = 900) -> list[tuple[int, bool, str]]:
    """Run a notebook top to bottom (it is not saved) and grade its exercises: ``(exercise, passed, message)``
    for each ``# CHECK`` cell, numbered from 1 in order; ``message`` is the check's output or its error."""
    path = Path(path)
    nb = nbformat.read(path, as_version=NOTEBOOK_VERSION)
    client = notebook_client(nb, path, timeout, allow_errors=True)  # a failed exercise must not stop the ones after it
    client.execute(env=kernel_env(profile))
    checks = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.startswith(CHECK_MARKER)]
    grades = []
    for number, cell in enumerate(checks, start=1):
        errors = [output for output in cell.outputs if output.output_type == "error"]
        if errors:
            grades.append((number, False, f"{errors[0].ename}: {errors[0].evalue}"))
        else:
            text = "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")
            grades.append((number, True, text.strip()))
    return grades
