"""The book as a PDF: its built HTML printed by the system's Chromium, offline, once MathJax has typeset it.

``make pdf`` builds the book as one HTML page (Sphinx's ``singlehtml`` builder) and prints it with
``python -m diffbook pdf``. Playwright drives the browser; its own browser download needs the internet, so the
system Chromium is used (Debian's ``chromium`` package, or ``$CHROMIUM``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

# MathJax 3 resolves this promise when the page's formulas are typeset; a page without MathJax has none.
TYPESET = "() => window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise.then(() => true) : true"
FORMULA_ERRORS = "document.querySelectorAll('mjx-merror').length"
BROKEN_IMAGES = "Array.from(document.images).filter(image => !(image.complete && image.naturalWidth > 0)).length"


def find_chromium() -> str | None:
    """The system Chromium: ``$CHROMIUM`` if set, else the first of Debian's and other distributions' names."""
    candidates = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    return next((path for name in candidates if name and (path := shutil.which(name))), None)


def print_pdf(url: str, out: str | Path, chromium: str | None = None) -> Path:
    """Print the page at ``url`` (``http://`` or ``file://``) to the PDF ``out`` with the system Chromium.

    Raises FileNotFoundError without a Chromium and ImportError without playwright (the ``dev`` extra).
    """
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found: install Debian's chromium package, or set $CHROMIUM to one")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            return print_page(browser, url, out)
        finally:
            browser.close()


def print_page(browser: Any, url: str, out: str | Path, timeout_ms: int = 120_000) -> Path:
    """Print ``url`` in a launched Playwright ``browser`` to the PDF ``out``: A4, backgrounds, an outline.

    Raises ValueError when a formula fails to typeset or a figure fails to load."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = browser.new_page()
    try:
        page.goto(url, wait_until="load", timeout=timeout_ms)
        page.evaluate(TYPESET)
        if errors := page.evaluate(FORMULA_ERRORS):
            raise ValueError(f"{url}: {errors} formula(s) failed to typeset")
        if broken := page.evaluate(BROKEN_IMAGES):
            raise ValueError(f"{url}: {broken} figure(s) failed to load")
        page.emulate_media(media="print")
        page.pdf(path=str(out), format="A4", print_background=True, outline=True, tagged=True)
    finally:
        page.close()
    return out
