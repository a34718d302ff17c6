"""The repository's conventions: profiles, notebook structure, exercises, citations and install instructions.

The notebook tests are parametrised over the notebooks that exist; the tools they rely on are also tested on
notebooks built in memory, so every convention is exercised even before a chapter is written.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from diffbook import current_profile, pick
from diffbook.booktools.exercises import (
    BEGIN_SOLUTION,
    CHECK_MARKER,
    END_SOLUTION,
    HIDE_INPUT,
    STUB,
    solution_blocks,
    student_copy,
    write_student_copies,
)
from diffbook.booktools.project import colab_install_cell, home_url
from diffbook.booktools.runner import execute_notebook, expand_notebook_paths
from diffbook.cli import main
from diffbook.profiles import ENV_VAR, PROFILES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BOOK_PAGES = sorted((ROOT / "book").glob("*.md"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
REPOSITORY_URL = home_url(ROOT)

CITATION = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
BIB_KEY = re.compile(r"^@\w+\s*\{\s*([^,\s]+)\s*,", re.MULTILINE)
# Paths that give away the machine a notebook ran on: home directories and Python installations.
MACHINE_PATH = re.compile(r"/home/|/Users/|/root/|[A-Za-z]:\\\\?Users|site-packages|dist-packages")
COMMAND_WORDS = ("make", "python", "pip", "conda", "torchrun", "jupyter", ".venv/")


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def parse_cell(source: str) -> ast.Module:
    """The cell as Python, with IPython syntax (``%pip``, ``!ls``) turned into calls first."""
    return ast.parse(TransformerManager().transform_cell(source))


def called_names(source: str) -> set[str]:
    calls = (node for node in ast.walk(parse_cell(source)) if isinstance(node, ast.Call))
    return {call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "") for call in calls}


def definitions(source: str) -> list[str]:
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node.name for node in ast.walk(parse_cell(source)) if isinstance(node, kinds)]


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def assert_is_student_copy(original: nbformat.NotebookNode, copy: nbformat.NotebookNode) -> None:
    """Solutions replaced by the stub, all other lines kept, outputs dropped, checks untouched."""
    assert len(copy.cells) == len(original.cells)
    for index, (before, after) in enumerate(zip(original.cells, copy.cells, strict=True)):
        assert after.cell_type == before.cell_type
        if before.cell_type != "code":
            assert after.source == before.source
            continue
        assert after.outputs == [] and after.execution_count is None, f"cell {index} keeps its outputs"
        blocks = solution_blocks(before.source)
        if not blocks:
            assert after.source == before.source, f"cell {index} changed"
            continue
        lines = before.source.splitlines()
        inside = {number for begin, end in blocks for number in range(begin, end + 1)}
        outside = [line for number, line in enumerate(lines) if number not in inside]
        solution = {lines[number].strip() for number in inside} - {line.strip() for line in outside} - {""}
        student_lines = after.source.splitlines()
        assert STUB in after.source and "NotImplementedError" in after.source
        assert not solution & {line.strip() for line in student_lines}, f"cell {index} leaks its solution"
        assert [line for line in student_lines if line in outside] == outside, f"cell {index} lost lines"
        assert HIDE_INPUT not in after.metadata.get("tags", [])


# Profiles.


def test_default_profile_is_book(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert current_profile() == "book"
    monkeypatch.setenv(ENV_VAR, "")
    assert current_profile() == "book"


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_can_be_selected(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(ENV_VAR, f" {name.upper()} ")
    assert current_profile() == name


def test_unknown_profile_lists_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match="fast") as error:
        current_profile()
    assert all(name in str(error.value) for name in PROFILES)


def test_pick_falls_back_from_full_to_book(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "full")
    assert pick(quick=1, book=2) == 2
    assert pick(quick=1, book=2, full=3) == 3
    monkeypatch.setenv(ENV_VAR, "quick")
    assert pick(quick=1, book=2, full=3) == 1


# Book configuration, table of contents and citations.


def test_book_renders_committed_outputs_with_colab_and_bibliography() -> None:
    assert CONFIG["execute"]["execute_notebooks"] == "off"
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPOSITORY_URL)
    assert all((ROOT / bib).is_file() for bib in CONFIG["bibtex_bibfiles"])


@pytest.mark.skipif(not NOTEBOOKS, reason="no chapter to render yet")
def test_built_book_renders_citations_launch_buttons_and_committed_figures(tmp_path: Path) -> None:
    """A real strict build: pages render cited references as links into the bibliography, every notebook page
    has its Colab button, and the figures committed with a notebook appear on its page."""
    build = subprocess.run(
        [
            str(Path(sys.executable).with_name("jupyter-book")),
            "build",
            str(ROOT),
            "--path-output",
            str(tmp_path),
            "--builder",
            "html",
            "--warningiserror",
            "--keep-going",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    html = tmp_path / "_build" / "html"
    assert (html / "index.html").is_file()
    preface = (html / "book" / "preface.html").read_text(encoding="utf-8")
    # Formulas render without a network: MathJax is served from the build itself.
    assert "_static/mathjax/tex-chtml.js" in preface and (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert re.search(r'<a class="reference internal" href="bibliography.html#[^"]+" title="Jonathan Ho', preface)
    for path in NOTEBOOKS:
        page = (html / "notebooks" / f"{path.stem}.html").read_text(encoding="utf-8")
        assert (
            f"https://colab.research.google.com/github/{REPOSITORY_URL.removeprefix('https://github.com/')}"
            f"/blob/main/notebooks/{path.name}" in page
        )
        figures = sum(
            "image/png" in output.get("data", {})
            for cell in code_cells(nbformat.read(path, 4))
            for output in cell.outputs
        )
        assert page.count("<img") >= figures > 0


def toc_files() -> set[str]:
    def walk(node: object) -> list[str]:
        if isinstance(node, dict):
            here = [node[key] for key in ("root", "file") if key in node]
            return here + [file for value in node.values() for file in walk(value)]
        if isinstance(node, list):
            return [file for value in node for file in walk(value)]
        return []

    return set(walk(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))))


def test_toc_lists_every_page_and_notebook() -> None:
    listed = toc_files()
    on_disk = {path.relative_to(ROOT).with_suffix("").as_posix() for path in BOOK_PAGES + NOTEBOOKS}
    assert on_disk <= listed, f"not in _toc.yml: {sorted(on_disk - listed)}"
    pages = {file for file in listed if not file.startswith("notebooks/")}
    assert all((ROOT / f"{page}.md").is_file() for page in pages), "_toc.yml lists a missing page"


def bibliography_keys() -> list[str]:
    return BIB_KEY.findall((ROOT / "book" / "references.bib").read_text(encoding="utf-8"))


def cited_keys() -> dict[str, set[str]]:
    """Citation keys per file, from the markdown pages and the notebooks' markdown cells."""
    texts = {path.name: path.read_text(encoding="utf-8") for path in BOOK_PAGES}
    for path in NOTEBOOKS:
        texts[path.name] = "\n".join(cell.source for cell in read(path).cells if cell.cell_type == "markdown")
    return {
        name: {key.strip() for match in CITATION.findall(text) for key in match.split(",")}
        for name, text in texts.items()
    }


def test_bibliography_has_unique_keys() -> None:
    keys = bibliography_keys()
    assert keys and len(keys) == len(set(keys))


def test_every_citation_is_in_the_bibliography() -> None:
    known = set(bibliography_keys())
    missing = {name: sorted(keys - known) for name, keys in cited_keys().items() if keys - known}
    assert not missing, f"citation keys missing from book/references.bib: {missing}"


# Notebooks as committed.


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_first_code_cell_installs_only_on_colab(path: Path) -> None:
    assert code_cells(read(path))[0].source.strip() == colab_install_cell(REPOSITORY_URL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_second_code_cell_sets_profile_and_seed(path: Path) -> None:
    calls = called_names(code_cells(read(path))[1].source)
    assert {"current_profile", "seed_everything"} <= calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_no_library_code_outside_exercises(path: Path) -> None:
    found = {
        index: names
        for index, cell in enumerate(read(path).cells)
        if cell.cell_type == "code" and not solution_blocks(cell.source) and (names := definitions(cell.source))
    }
    assert not found, f"def/class in code cells (move them to src/diffbook): {found}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_exercises_are_hidden_and_checked(path: Path) -> None:
    cells = read(path).cells
    for index, cell in enumerate(cells):
        if cell.cell_type != "code" or not solution_blocks(cell.source):
            continue
        assert HIDE_INPUT in cell.metadata.get("tags", []), f"cell {index}: exercise not tagged {HIDE_INPUT}"
        following = [later for later in cells[index + 1 :] if later.cell_type == "code"]
        assert following, f"cell {index}: exercise without a {CHECK_MARKER} cell after it"
        first_line = following[0].source.lstrip().splitlines()[0].strip()
        assert first_line == CHECK_MARKER, f"cell {index}: the next code cell does not start with {CHECK_MARKER}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_student_copy_of_notebook(path: Path) -> None:
    nb = read(path)
    assert_is_student_copy(nb, student_copy(nb))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_is_committed_with_a_clean_top_to_bottom_run(path: Path) -> None:
    cells = code_cells(read(path))
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), "run `make notebooks NB=...` before committing"
    leaks = [index for index, cell in enumerate(cells) if MACHINE_PATH.search(json.dumps(cell.outputs))]
    assert not leaks, f"code cells {leaks} show a path of the machine that ran them"


# Notebook tools, on notebooks built here.


def exercise_notebook() -> nbformat.NotebookNode:
    exercise = new_code_cell(
        "import torch\n"
        "\n"
        "def forward(x0, eps, alpha_bar):\n"
        f"    {BEGIN_SOLUTION}\n"
        "    scaled = alpha_bar.sqrt() * x0\n"
        "    return scaled + (1 - alpha_bar).sqrt() * eps\n"
        f"    {END_SOLUTION}\n"
        "\n"
        "x_t = forward(torch.zeros(3), torch.ones(3), torch.tensor(0.75))",
        metadata={"tags": [HIDE_INPUT]},
        execution_count=3,
        outputs=[nbformat.v4.new_output("stream", name="stdout", text="done\n")],
    )
    return new_notebook(
        cells=[
            new_code_cell(colab_install_cell(REPOSITORY_URL), execution_count=1),
            new_code_cell("from diffbook import current_profile\n\nPROFILE = current_profile()", execution_count=2),
            new_markdown_cell("Write the forward process."),
            exercise,
            new_code_cell(f"{CHECK_MARKER}\nassert torch.allclose(x_t, torch.full((3,), 0.5))", execution_count=4),
        ]
    )


def test_student_copy_stubs_solutions_and_keeps_checks() -> None:
    nb = exercise_notebook()
    copy = student_copy(nb)
    assert_is_student_copy(nb, copy)
    exercise = copy.cells[3].source.splitlines()
    assert exercise[3:5] == [f"    {STUB}", '    raise NotImplementedError("Replace this line with your solution.")']
    assert copy.cells[4].source == nb.cells[4].source
    assert nb.cells[3].outputs and BEGIN_SOLUTION in nb.cells[3].source, "the original must not change"


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        (f"{BEGIN_SOLUTION}\nx = 1", "never closed"),
        (f"x = 1\n{END_SOLUTION}", "without"),
        (f"{BEGIN_SOLUTION}\n{BEGIN_SOLUTION}\nx = 1\n{END_SOLUTION}", "inside"),
    ],
)
def test_student_copy_rejects_unbalanced_markers(source: str, problem: str) -> None:
    nb = new_notebook(cells=[new_markdown_cell("Exercise."), new_code_cell(source)])
    with pytest.raises(ValueError, match=rf"cell 1: line \d+: .*{problem}"):
        student_copy(nb)


def test_exercises_command_writes_student_copies(tmp_path: Path) -> None:
    src, out = tmp_path / "notebooks", tmp_path / "students"
    src.mkdir()
    nbformat.write(exercise_notebook(), src / "02_b.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("No exercise here.")]), src / "01_a.ipynb")
    assert main(["exercises", "--src", str(src), "--out", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["01_a.ipynb", "02_b.ipynb"]
    assert_is_student_copy(exercise_notebook(), read(out / "02_b.ipynb"))
    assert write_student_copies(src, out) == [out / "01_a.ipynb", out / "02_b.ipynb"]


def test_notebook_paths_expand_directories_in_order(tmp_path: Path) -> None:
    for name in ("02_b.ipynb", "01_a.ipynb", "notes.md"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    single = tmp_path / "02_b.ipynb"
    assert expand_notebook_paths([tmp_path, single]) == [tmp_path / "01_a.ipynb", single, single]
    with pytest.raises(FileNotFoundError):
        expand_notebook_paths([tmp_path / "missing.ipynb"])


def test_execute_notebook_sets_the_kernel_environment_and_refuses_machine_paths(tmp_path: Path) -> None:
    path = tmp_path / "run.ipynb"
    report = "import os, sys\nprint(os.environ['DIFFBOOK_PROFILE'], os.environ['TQDM_DISABLE'], sys.executable)"
    nbformat.write(new_notebook(cells=[new_code_cell(report), new_code_cell("print(os.getcwd())")]), path)
    with pytest.raises(RuntimeError, match="paths of this machine"):
        execute_notebook(path, profile="quick", timeout=120)
    first, second = code_cells(read(path))
    assert first.outputs[0].text.split() == ["quick", "1", sys.executable]
    assert second.outputs[0].text.strip() == str(tmp_path.resolve())
    assert (first.execution_count, second.execution_count) == (1, 2)


# Documentation and installation.


def test_readme_starts_with_make_book_and_make_test() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block, inline in re.findall(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", text, flags=re.DOTALL):
        lines = block.splitlines() if block else [inline]
        commands += [line.split(" #")[0].strip() for line in lines]
    commands = [command for command in commands if command.startswith(COMMAND_WORDS)]
    assert commands[:2] == ["make book", "make test"]


def test_contributing_shows_the_install_cell_of_the_notebooks() -> None:
    assert colab_install_cell("<HOME>", "<VERSION>") in (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")


def test_conda_environment_installs_the_extras_of_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    )
    environment = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    installs = [re.fullmatch(r"-e \.\[([\w,-]+)\]", line) for line in pip]
    editable = [match.group(1) for match in installs if match]
    assert len(editable) == 1 and set(editable[0].split(",")) == extras
