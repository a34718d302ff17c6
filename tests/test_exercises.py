"""The course assignments: committed students' copies that match the chapters, solutions that pass every check,
untouched copies that fail every one, and an instructors' page that lists every exercise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from diffbook.booktools.exercises import BEGIN_SOLUTION, CHECK_MARKER, grade, student_copy
from diffbook.cli import main

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXERCISES = ROOT / "exercises"
INSTRUCTORS = ROOT / "book" / "instructors.md"


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _checks(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.startswith(CHECK_MARKER)]


def test_there_is_one_students_copy_per_chapter():
    assert sorted(path.name for path in EXERCISES.glob("*.ipynb")) == [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_students_copy_is_up_to_date(path: Path):
    expected, committed = student_copy(_read(path)), _read(EXERCISES / path.name)
    stale = [
        index
        for index, (want, have) in enumerate(zip(expected.cells, committed.cells, strict=False))
        if (want.cell_type, want.source, want.get("outputs")) != (have.cell_type, have.source, have.get("outputs"))
    ]
    assert len(expected.cells) == len(committed.cells) and not stale, (
        f"exercises/{path.name} is stale (cells {stale}): run `make exercises` and commit exercises/"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_solutions_passed_every_check_in_the_committed_run(path: Path):
    checks = _checks(_read(path))
    assert checks, f"{path.name} has no graded exercise"
    for number, cell in enumerate(checks, start=1):
        errors = [output for output in cell.outputs if output.output_type == "error"]
        text = "".join(output.get("text", "") for output in cell.outputs)
        assert not errors and "correct" in text, f"{path.name}: exercise {number}'s check did not pass"


@pytest.mark.parametrize("path", sorted(EXERCISES.glob("*.ipynb")), ids=lambda p: p.stem)
def test_an_untouched_students_copy_fails_every_check(path: Path):
    grades = grade(path, profile="quick")
    assert len(grades) == len(_checks(_read(path)))
    assert [passed for _, passed, _ in grades] == [False] * len(grades), grades


def test_grading_a_solution_notebook_passes_and_says_which_exercise(tmp_path: Path, capsys):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("# BEGIN SOLUTION\nanswer = 42\n# END SOLUTION"),
            nbformat.v4.new_code_cell(f"{CHECK_MARKER}\nassert answer == 42\nprint('exercise 1: correct')"),
            nbformat.v4.new_code_cell("# BEGIN SOLUTION\nother = 1\n# END SOLUTION"),
            nbformat.v4.new_code_cell(f"{CHECK_MARKER}\nassert other == 2, 'other must be 2'"),
        ]
    )
    nbformat.write(nb, tmp_path / "solved.ipynb")
    assert main(["exercises", "--check", str(tmp_path / "solved.ipynb")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "exercise 1: PASS" in lines[0] and "exercise 1: correct" in lines[0]
    assert "exercise 2: FAIL" in lines[1] and "other must be 2" in lines[1]


def test_make_exercises_is_idempotent(tmp_path: Path):
    out = tmp_path / "exercises"
    assert main(["exercises", "--src", str(ROOT / "notebooks"), "--out", str(out)]) == 0
    first = {path.name: path.read_bytes() for path in out.iterdir()}
    assert main(["exercises", "--src", str(ROOT / "notebooks"), "--out", str(out)]) == 0
    assert {path.name: path.read_bytes() for path in out.iterdir()} == first
    assert first == {path.name: path.read_bytes() for path in EXERCISES.glob("*.ipynb")}


def test_the_instructors_page_lists_every_exercise_with_time_and_difficulty():
    rows = re.findall(r"^\| (\d\d) \| (\d) \| .+ \| (\d+) min \| (★+) \|$", INSTRUCTORS.read_text(), re.MULTILINE)
    listed = sorted((chapter, int(number)) for chapter, number, _, _ in rows)
    expected = sorted(
        (path.name[:2], number) for path in NOTEBOOKS for number in range(1, len(_checks(_read(path))) + 1)
    )
    assert listed == expected


def test_the_students_edition_hides_every_solution_and_keeps_every_other_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the command copies the book it is run in
    out = tmp_path / "students"
    assert main(["exercises", "--book", str(out)]) == 0
    assert "jupyter-book build" in capsys.readouterr().out
    assert yaml.safe_load((out / "_config.yml").read_text())["title"].endswith("(students' edition)")
    assert (out / "_toc.yml").read_text() == (ROOT / "_toc.yml").read_text() and (
        out / "book" / "notation.md"
    ).is_file()
    for path in NOTEBOOKS:
        chapter, edition = (nbformat.read(p, as_version=4) for p in (path, out / "notebooks" / path.name))
        assert BEGIN_SOLUTION not in json.dumps(edition.cells), path.name
        for cell, shown in zip(chapter.cells, edition.cells, strict=True):
            answers = BEGIN_SOLUTION in cell.source or cell.source.startswith(CHECK_MARKER)
            assert shown.outputs == [] if answers else shown == cell, path.name
    (out / "notebooks" / "extra.txt").write_text("left by the last build")
    assert main(["exercises", "--book", str(out)]) == 0  # its own folder is replaced whole
    assert not (out / "notebooks" / "extra.txt").exists()
    (tmp_path / "mine").mkdir()
    assert main(["exercises", "--book", str(tmp_path / "mine")]) == 2
    assert "is not a students' book written here" in capsys.readouterr().err
