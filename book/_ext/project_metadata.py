"""The book's version, home URL, licence and citation, read from the one place each is set
(:mod:`diffbook.booktools.project`) when the book is built.

- the title carries the version, and the footer the licences and the version;
- the repository and Colab buttons point at the home URL of pyproject.toml;
- ``{cite-this-book}`` renders the citation of CITATION.cff, as a sentence and as BibTeX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.util.docutils import SphinxDirective

import diffbook
from diffbook.booktools.project import (
    CODE_LICENCE,
    CONTENT_LICENCE,
    CONTENT_LICENCE_URL,
    bibtex,
    citation,
    home_url,
)


def set_metadata(app: Sphinx, config: Config) -> None:
    root, version = Path(app.confdir), diffbook.__version__
    config.version = config.release = version
    config.html_title = f"{config.html_title} (v{version})"
    options = config.html_theme_options
    options["repository_url"], options["use_repository_button"] = home_url(root), True
    options["extra_footer"] = (
        f"diffbook v{version}. Code: {CODE_LICENCE}. Text and figures: "
        f'<a href="{CONTENT_LICENCE_URL}">{CONTENT_LICENCE}</a>.'
    )


class CiteThisBook(SphinxDirective):
    """The book's citation: authors, title, version, year and URL as a sentence, then the BibTeX entry."""

    def run(self) -> list[nodes.Node]:
        root = Path(self.env.app.confdir)
        cff = citation(root)
        authors = ", ".join(author.get("name") or author["family-names"] for author in cff["authors"])
        sentence = (
            f"{authors} ({cff['date-released'].year}). {cff['title']}. "
            f"Version {diffbook.__version__}. {home_url(root)}"
        )
        entry = bibtex(root)
        return [nodes.paragraph(text=sentence), nodes.literal_block(entry, entry, language="bibtex")]


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", set_metadata)
    app.add_directive("cite-this-book", CiteThisBook)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
