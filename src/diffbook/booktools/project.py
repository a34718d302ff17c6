"""The project's metadata, each piece set in one place and read or stamped from there by everything else.

- the version: ``diffbook.__version__`` (pyproject.toml reads it too);
- the home URL: ``[project.urls] Homepage`` in pyproject.toml;
- how to cite the book: ``CITATION.cff``.

The book reads them when it is built (``book/_ext/project_metadata.py``: the title's version, the footer, the
repository and Colab buttons, the preface's "Cite this book"). The files that cannot read anything, the notebooks'
Colab install cell and CITATION.cff's version, are stamped by ``python -m diffbook stamp``; tests check that
nothing has drifted and that the URL is written nowhere else.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

import diffbook

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CODE_LICENCE = "MIT"
CONTENT_LICENCE = "CC BY 4.0"
CONTENT_LICENCE_URL = "https://creativecommons.org/licenses/by/4.0/"


def home_url(root: Path) -> str:
    """The project's home, ``https://github.com/<owner>/<name>``, from pyproject.toml."""
    with open(root / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["urls"]["Homepage"]


def colab_install_cell(url: str, version: str = diffbook.__version__) -> str:
    """The first code cell of every chapter: on Colab, install the package at the book's own version's tag."""
    return (
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:  # elsewhere `make` has installed the package already\n'
        f'    %pip install --quiet "diffbook[book] @ git+{url}@v{version}"'
    )


def citation(root: Path) -> dict[str, Any]:
    """CITATION.cff as a mapping."""
    return yaml.safe_load((root / "CITATION.cff").read_text(encoding="utf-8"))


def bibtex(root: Path) -> str:
    """The book's BibTeX entry, from CITATION.cff, the version and the home URL."""
    cff = citation(root)
    authors = " and ".join(
        author.get("name") or f"{author['family-names']}, {author['given-names']}" for author in cff["authors"]
    )
    return (
        "@book{diffbook,\n"
        f"  title     = {{{{{cff['title']}}}}},\n"
        f"  author    = {{{{{authors}}}}},\n"
        f"  year      = {{{cff['date-released'].year}}},\n"
        f"  edition   = {{{diffbook.__version__}}},\n"
        f"  url       = {{{home_url(root)}}},\n"
        "}"
    )


def stamp(root: Path) -> list[Path]:
    """Write the version and the home URL into the files that cannot read them; returns the files changed."""
    changed = [path for path in sorted((root / "notebooks").glob("*.ipynb")) if _stamp_notebook(path, home_url(root))]
    cff = root / "CITATION.cff"
    text = cff.read_text(encoding="utf-8")
    stamped = re.sub(r"(?m)^version: .*$", f'version: "{diffbook.__version__}"', text)
    if stamped != text:
        cff.write_text(stamped, encoding="utf-8")
        changed.append(cff)
    return changed


def _stamp_notebook(path: Path, url: str) -> bool:
    # The notebook's JSON is edited as Jupyter writes it, so that stamping changes the one cell and no other byte.
    nb = json.loads(path.read_text(encoding="utf-8"))
    first = next(cell for cell in nb["cells"] if cell["cell_type"] == "code")
    cell = colab_install_cell(url)
    if "".join(first["source"]) == cell:
        return False
    first["source"] = cell if isinstance(first["source"], str) else cell.splitlines(keepends=True)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return True
