"""Exercises: the students' copies of the notebooks, and grading a notebook's exercises.

Exercises are written as solutions between two marker lines::

    # BEGIN SOLUTION
    loss = (eps - eps_hat).pow(2).mean()
    # END SOLUTION

:func:`student_copy` replaces each marked block by a stub that raises ``NotImplementedError`` and drops every
output, so that the cell that follows, whose first line is ``# CHECK``, fails until the student has filled it in.
:func:`write_students_book` writes the book's sources with the same stubs but the other cells' outputs kept: the
students' edition of the book, which an instructor can publish in place of the one with solutions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import yaml

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


def students_edition(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The chapter as the students' edition of the book renders it: each solution stubbed out as in
    :func:`student_copy`, the outputs of those cells and of their ``# CHECK`` cells dropped (they would show the
    answer), and every other output, the chapter's figures and tables, kept."""
    copy, stubbed = nbformat.from_dict(nb), student_copy(nb)
    for cell, student_cell in zip(copy.cells, stubbed.cells, strict=True):
        if cell.cell_type == "code" and (cell.source != student_cell.source or cell.source.startswith(CHECK_MARKER)):
            cell.source, cell.outputs, cell.execution_count = student_cell.source, [], None
            cell.metadata = student_cell.metadata
    return copy


BOOK_FILES = ("_config.yml", "_toc.yml", "pyproject.toml", "CITATION.cff")  # what jupyter-book and book/_ext read
BOOK_DIRS = ("book", "notebooks")
STUDENTS_MARK = ".students-book"  # in a folder this wrote, so that it is the only kind ever replaced


def write_students_book(root: str | Path, out: str | Path) -> Path:
    """Copy the book's sources in ``root`` to ``out``, its chapters as :func:`students_edition` makes them and its
    title marked as the students' edition; ``jupyter-book build out`` then renders it (``make students-book``).

    Raises:
        ValueError: if ``out`` exists and was not written by this function (it is replaced otherwise).
    """
    root, out = Path(root), Path(out)
    if out.exists():
        if not (out / STUDENTS_MARK).is_file():
            raise ValueError(f"{out} exists and is not a students' book written here: give a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / STUDENTS_MARK).touch()
    for name in BOOK_FILES:
        shutil.copy2(root / name, out / name)
    for name in BOOK_DIRS:
        shutil.copytree(root / name, out / name, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "_build"))
    for path in sorted((out / "notebooks").glob("*.ipynb")):
        nbformat.write(students_edition(nbformat.read(path, as_version=NOTEBOOK_VERSION)), path)
    config = yaml.safe_load((out / "_config.yml").read_text(encoding="utf-8"))
    config["title"] = f"{config['title']} (students' edition)"
    (out / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return out


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
