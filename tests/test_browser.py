"""The built book in a real browser: headless Chromium, driven by Playwright, over a local HTTP server.

Every page of the table of contents loads without a console error or a failed request, its figures and committed
outputs are drawn, its formulas are typeset by the MathJax that ships with the site, its Colab button opens its
own notebook, and its internal links (with their fragments) lead to pages that exist. The search page finds a
term that only a chapter contains. Screenshots of two pages go to ``_build/screenshots/`` for a person to look at.

Playwright's own browser download needs the internet, so the test drives the system's Chromium (Debian's
``chromium`` package, which ``.ci/run`` installs). Without it the test is skipped with a message saying so,
except where ``DIFFBOOK_REQUIRE_BROWSER=1`` (CI), where a missing browser is a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import nbformat
import pytest
import yaml

import diffbook
from diffbook.booktools.pdf import find_chromium, print_page
from diffbook.booktools.project import CONTENT_LICENCE, home_url

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = home_url(ROOT).removeprefix("https://github.com/")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SCREENSHOTS = ROOT / "_build" / "screenshots"
# A term that only a chapter uses, and the page the search must lead to.
SEARCH_TERM, SEARCH_PAGE = "isotropy", "notebooks/03_iso_diffusion.html"


def require_browser() -> tuple[object, str]:
    """Playwright's sync API and the Chromium to drive, or a skip (a failure under DIFFBOOK_REQUIRE_BROWSER=1)."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the Python package playwright (pip install playwright; it is in the dev extra)"
    chromium = find_chromium()
    if missing is None and chromium is None:
        missing = "Chromium: install Debian's chromium package (apt-get install chromium), or set $CHROMIUM"
    if missing is not None:
        if os.environ.get("DIFFBOOK_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test needs {missing}")
        pytest.skip(f"the browser test needs {missing}")
    return sync_playwright, chromium


def toc_pages() -> list[str]:
    """Every page of ``_toc.yml`` as its HTML path in the built site."""

    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    yield f"{node[key]}.html"
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return list(dict.fromkeys(walk(yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8")))))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The book, built strictly into a temporary directory and served on a free port of localhost."""
    out = tmp_path_factory.mktemp("book")
    jupyter_book = str(Path(sys.executable).with_name("jupyter-book"))
    build = subprocess.run(
        [jupyter_book, "build", str(ROOT), "--path-output", str(out), "--builder", "html", "--warningiserror"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    handler = functools.partial(QuietHandler, directory=str(out / "_build" / "html"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    thread.join()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not logged: pytest would show them with any failure."""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_playwright, chromium = require_browser()
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


class PageVisit:
    """One page opened in a fresh tab, with every console error, script error and failed request recorded.

    Requests that leave localhost are refused and recorded too: the built book must work offline.
    """

    def __init__(self, browser: object, url: str) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(f"script error: {error}"))
        self.page.on("requestfailed", lambda request: self.errors.append(f"failed request: {request.url}"))
        self.page.route(re.compile(r"^(?!http://127\.0\.0\.1:).*"), self._refuse)
        response = self.page.goto(url, wait_until="load")
        assert response is not None and response.ok, f"{url}: HTTP {response and response.status}"

    def _refuse(self, route: object) -> None:
        self.errors.append(f"external request: {route.request.url}")
        route.abort()

    def math_elements(self) -> int:
        """Formulas typeset by MathJax once it has finished; raises where MathJax reports an error.

        Sphinx loads MathJax only on pages with math, so a page without it has none to typeset."""
        if self.page.locator("script[src*='mathjax']").count() == 0:
            return 0
        self.page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
        self.page.evaluate("() => MathJax.startup.promise")
        assert self.page.locator("mjx-merror").count() == 0, "MathJax could not typeset a formula"
        return self.page.locator("mjx-container").count()

    def internal_links(self) -> set[str]:
        hrefs = self.page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
        base = urlparse(self.page.url)
        return {href for href in hrefs if urlparse(href).netloc == base.netloc}


def committed_markdown_tables(notebook: Path) -> int:
    """Markdown outputs of ``notebook`` that hold a table (a ``|---|`` separator row)."""
    cells = nbformat.read(notebook, as_version=4).cells
    outputs = (output for cell in cells if cell.cell_type == "code" for output in cell.outputs)
    return sum(bool(re.search(r"^\|[-| :]+\|$", o.get("data", {}).get("text/markdown", ""), re.M)) for o in outputs)


def committed_figures(notebook: Path) -> int:
    cells = nbformat.read(notebook, as_version=4).cells
    return sum(
        "image/png" in output.get("data", {}) for cell in cells if cell.cell_type == "code" for output in cell.outputs
    )


def test_every_page_renders_offline_with_figures_math_colab_and_working_links(site: str, browser: object) -> None:
    pages = toc_pages()
    assert len(pages) >= 5
    links: set[str] = set()
    math_on: dict[str, int] = {}
    for path in pages:
        visit = PageVisit(browser, urljoin(site, path))
        math_on[path] = visit.math_elements()
        if path.startswith("notebooks/"):
            notebook = ROOT / f"{path.removesuffix('.html')}.ipynb"
            shown = visit.page.eval_on_selector_all(
                ".cell_output img", "images => images.filter(i => i.complete && i.naturalWidth > 0).length"
            )
            assert shown >= committed_figures(notebook) > 0, f"{path}: {shown} figures drawn"
            colab = f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/{notebook.name}"
            assert visit.page.locator(f'a[href="{colab}"]').count() >= 1, f"{path}: no Colab button for its notebook"
            assert visit.page.locator(".cell_output").count() > 0, f"{path}: no committed output is shown"
            tables = committed_markdown_tables(notebook)
            assert visit.page.locator(".cell_output table").count() >= tables, f"{path}: printed tables not rendered"
            raw = visit.page.locator(".cell_output").filter(has_text=re.compile(r"\|\s*-{3,}\s*\|")).count()
            assert raw == 0, f"{path}: {raw} outputs show Markdown table syntax as text"
        links |= visit.internal_links()
        assert not visit.errors, f"{path}: {visit.errors}"
        visit.page.close()
    assert math_on["book/notation.html"] > 20 and all(math_on[p] > 0 for p in pages if p.startswith("notebooks/"))
    assert_links_resolve(browser, links)


def assert_links_resolve(browser: object, links: set[str]) -> None:
    """Every internal link is a page the server has, and every fragment names an element of that page."""
    context = browser.new_context()
    broken = []
    bodies: dict[str, str] = {}
    for link in sorted(links):
        url, fragment = urldefrag(link)
        if url not in bodies:
            response = context.request.get(url)
            bodies[url] = response.text() if response.ok else ""
            if not response.ok:
                broken.append(f"{link}: HTTP {response.status}")
                continue
        if fragment and not re.search(rf'id="{re.escape(fragment)}"', bodies[url]):
            broken.append(f"{link}: no element with id {fragment!r}")
    context.close()
    assert not broken, broken


def test_search_finds_a_chapter_term(site: str, browser: object) -> None:
    visit = PageVisit(browser, urljoin(site, f"search.html?q={SEARCH_TERM}"))
    results = visit.page.locator("#search-results ul.search li a")
    results.first.wait_for(timeout=20_000)
    targets = [href.split("?")[0].split("#")[0] for href in results.evaluate_all("links => links.map(a => a.href)")]
    assert urljoin(site, SEARCH_PAGE) in targets, targets
    assert not visit.errors, visit.errors


def test_screenshots_of_the_preface_and_a_chapter(site: str, browser: object) -> None:
    """The preface as a reader lands on it, and a chapter scrolled to its first figure."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for path, name in [("book/preface.html", "preface.png"), (SEARCH_PAGE, "chapter.png")]:
        visit = PageVisit(browser, urljoin(site, path))
        visit.math_elements()
        if path.startswith("notebooks/"):
            visit.page.locator(".cell_output img").first.scroll_into_view_if_needed()
        visit.page.screenshot(path=str(SCREENSHOTS / name), full_page=False)
        assert (SCREENSHOTS / name).stat().st_size > 10_000
        visit.page.close()


def test_the_book_shows_its_version_licences_and_citation(site: str, browser: object) -> None:
    visit = PageVisit(browser, urljoin(site, "book/preface.html"))
    version = f"v{diffbook.__version__}"
    assert version in visit.page.title() and version in visit.page.locator("footer.bd-footer-content").inner_text()
    assert CONTENT_LICENCE in visit.page.locator("footer.bd-footer-content").inner_text()
    bibtex = visit.page.locator("#cite-this-book pre").inner_text()
    assert bibtex.startswith("@book{diffbook,") and f"url       = {{{home_url(ROOT)}}}" in bibtex
    assert not visit.errors, visit.errors
    visit.page.close()


def test_a_chapter_prints_to_a_pdf_with_its_text_formulas_and_figures(site: str, browser: object, tmp_path) -> None:
    from pypdf import PdfReader

    pdf = PdfReader(print_page(browser, urljoin(site, SEARCH_PAGE), tmp_path / "chapter.pdf"))
    text = unicodedata.normalize("NFKC", " ".join(page.extract_text() for page in pdf.pages))  # "ﬀ" -> "ff"
    assert len(pdf.pages) >= 5 and "Iso-Diffusion" in text and SEARCH_TERM in text
    assert "\\frac" not in text and "$$" not in text  # formulas typeset, not their TeX
    figures = sum(len(page.images) for page in pdf.pages)
    assert figures >= committed_figures(
        ROOT / "notebooks" / SEARCH_PAGE.removeprefix("notebooks/").replace(".html", ".ipynb")
    )


def test_the_sampling_animation_plays_in_the_static_book(site: str, browser: object) -> None:
    visit = PageVisit(browser, urljoin(site, "notebooks/01_foundations.html"))
    animation = visit.page.locator(".diffbook-animation").first
    animation.scroll_into_view_if_needed()
    assert animation.locator("svg").count() == 3
    dot = animation.locator("svg circle[id]").first
    label = animation.locator(".diffbook-frame")
    start, first_label = (dot.get_attribute("cx"), dot.get_attribute("cy")), label.inner_text()
    assert first_label.startswith("frame 0 of ")
    animation.locator("button").click()
    visit.page.wait_for_function(
        "element => element.textContent !== 'frame 0 of ' + element.textContent.split(' of ')[1]",
        arg=label.element_handle(),
    )
    visit.page.wait_for_timeout(500)
    assert (dot.get_attribute("cx"), dot.get_attribute("cy")) != start, "the points did not move"
    assert not visit.errors, visit.errors
    visit.page.close()
