"""The book cites nothing a reader cannot open: no private notes, specs or fact files, and every decision label
it names (S1-S4 and SP1-SP7 on the decisions page, D1-D18 on DiffiT's) is defined on one of the book's pages.
And every chapter ends with further reading, each work in the bibliography.

Readers see the chapters (their text, code and outputs), the book's pages, the README, the configs (which
``python -m diffbook train --dry-run`` prints) and the package's docstrings, so all of them are searched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Phrases that point at material outside the repository, each as a reader would meet it.
UNOPENABLE = ("our notes", "the spec", "spec §", "baselines file", "secondary source", "the facts file")
LABEL = re.compile(r"\b(?:SP|S|D)\d{1,2}\b")


def _cell_texts(cell: dict) -> Iterator[str]:
    yield "".join(cell["source"])
    for output in cell.get("outputs", []):
        yield "".join(output.get("text", ""))
        data = output.get("data", {})
        for mime in ("text/plain", "text/markdown"):  # images and HTML carry base64, which spells anything
            yield "".join(data.get(mime, ""))


def reader_texts() -> Iterator[tuple[str, str]]:
    """``(where, text)`` for everything a reader of the book or user of the package reads."""
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            yield f"{path.name} cell {index}", "\n".join(_cell_texts(cell))
    files = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]
    files += sorted((ROOT / "src" / "diffbook" / "configs").glob("*/*.yaml"))
    files += sorted((ROOT / "src" / "diffbook").rglob("*.py"))
    for path in files:
        yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")


def defined_labels() -> set[str]:
    """The labels the decisions pages define: a table row ``| S2 |`` or a paragraph ``**D17. ...**``."""
    book = ROOT / "book"
    rows = re.findall(r"^\| (SP?\d+) \|", (book / "decisions.md").read_text(encoding="utf-8"), re.MULTILINE)
    paragraphs = re.findall(r"^\*\*(D\d+)\.", (book / "diffit_decisions.md").read_text(encoding="utf-8"), re.MULTILINE)
    return set(rows) | set(paragraphs)


def unopenable_phrases(text: str) -> list[str]:
    lowered = text.lower()
    return [phrase for phrase in UNOPENABLE if phrase in lowered]


def undefined_labels(text: str, defined: set[str]) -> list[str]:
    return sorted(set(LABEL.findall(text)) - defined)


def test_the_decisions_pages_define_every_label_they_announce():
    assert defined_labels() == {f"S{i}" for i in range(1, 5)} | {f"SP{i}" for i in range(1, 8)} | {
        f"D{i}" for i in range(1, 19)
    }


def test_the_checks_catch_what_they_look_for():
    assert unopenable_phrases("as in Our Notes, and the spec §3") == ["our notes", "the spec", "spec §"]
    assert undefined_labels("(book: decisions, S2; diffit_decisions, D19)", defined_labels()) == ["D19"]


@pytest.mark.parametrize(("where", "text"), [pytest.param(where, text, id=where) for where, text in reader_texts()])
def test_nothing_points_at_material_a_reader_cannot_open(where, text):
    assert not unopenable_phrases(text), f"{where} cites {unopenable_phrases(text)}"
    assert not undefined_labels(text, defined_labels()), f"{where} names undefined decisions"


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda path: path.stem)
def test_every_chapter_ends_with_further_reading_from_the_bibliography(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "markdown" for line in "".join(cell["source"]).splitlines()]
    sections = [re.sub(r"^## (\d+\. )?", "## ", line) for line in lines if line.startswith("## ")]
    assert sections[-3:] == ["## What to conclude", "## Exercises", "## Further reading"], path.name
    last = "".join(cells[-1]["source"])
    cited = set(re.findall(r"\{cite:t\}`([^`]+)`", last))
    bibliography = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    assert len(cited) >= 3 and all(f"{{{key}," in bibliography for key in cited), path.name
