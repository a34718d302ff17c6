"""Writing into ``benchmarks/RESULTS.md``: each script owns the blocks between its own markers and nothing else."""

from __future__ import annotations

import re
from pathlib import Path


def write_marked_section(path: Path, marker: str, text: str) -> None:
    """Replace the block between ``<!-- marker -->`` and ``<!-- end marker -->`` in ``path`` by ``text``, or
    append it when the file has none; the rest of the file is left as it was."""
    begin, end = f"<!-- {marker} -->", f"<!-- end {marker} -->"
    block = f"{begin}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)
