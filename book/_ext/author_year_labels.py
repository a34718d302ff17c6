"""Bibliography labels in the author-year form of the book's citations: [Ho et al., 2020], not [4].

With ``bibtex_reference_style: author_year`` the text reads "Ho et al. [2020]", but pybtex's label styles
number or abbreviate the entries of the bibliography. The ``author_year`` formatting style registered here is
pybtex's ``plain`` (sorted by author, year and title) with labels built as the citations are; labels that would
coincide get a letter after the year, as in [Song et al., 2021a] and [Song et al., 2021b].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from string import ascii_lowercase

from pybtex.database import Entry
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.application import Sphinx


def author_year(entry: Entry) -> str:
    """``Ho et al., 2020``; ``Lin and Yang, 2024``; ``Ho, 2020``."""
    surnames = [" ".join(person.last_names) for person in entry.persons["author"]]
    authors = f"{surnames[0]} et al." if len(surnames) > 2 else " and ".join(surnames)
    return f"{authors}, {entry.fields['year']}"


class AuthorYearLabels(BaseLabelStyle):
    def format_labels(self, sorted_entries: Iterable[Entry]) -> Iterator[str]:
        labels = [author_year(entry) for entry in sorted_entries]
        total, seen = Counter(labels), Counter[str]()
        for label in labels:
            if total[label] == 1:
                yield label
            else:
                yield label + ascii_lowercase[seen[label]]
                seen[label] += 1


class AuthorYearStyle(PlainStyle):
    default_label_style = AuthorYearLabels


def setup(app: Sphinx) -> dict[str, bool]:
    register_plugin("pybtex.style.formatting", "author_year", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
