"""Two fixes to the theme stack, each of which puts an error in the browser console of every page.

- sphinx-thebe adds its configuration script whenever Sphinx is about to read documents, which happens more
  than once in a Jupyter Book build. The copies redeclare a ``const``: a script error. Each script is kept once.
- pydata-sphinx-theme's layout reads ``default_mode``, which nothing in this theme stack sets, and its script
  rejects the empty mode it then gets. The book's mode is ``auto``: it follows the reader's system setting.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def unique_scripts(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any) -> None:
    seen: set[tuple[str, tuple]] = set()
    scripts = []
    for script in context.get("script_files", []):
        # A body-only script is registered with filename None by one call and "" by another.
        key = (str(script.filename or ""), tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            scripts.append(script)
    context["script_files"] = scripts
    context.setdefault("default_mode", "auto")


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", unique_scripts, priority=900)  # after the extensions that add scripts
    return {"parallel_read_safe": True, "parallel_write_safe": True}
