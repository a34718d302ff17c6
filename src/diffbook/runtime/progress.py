"""Progress bars that honour ``TQDM_DISABLE`` everywhere, Jupyter widgets included."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(
    iterable: Iterable | None = None, desc: str | None = None, enabled: bool = True, **kwargs: Any
) -> tqdm:
    """A ``tqdm.auto`` bar over ``iterable`` (None: a bar moved by ``update(n)``), off when ``enabled`` is False
    or ``TQDM_DISABLE`` is set.

    tqdm reads ``TQDM_DISABLE`` in the terminal but its notebook widget does not, and executed notebooks
    would otherwise store a frozen "0%" widget in their outputs.
    """
    disabled = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(iterable, desc=desc, disable=disabled, **kwargs)
