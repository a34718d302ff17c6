"""Progress bars that honour ``TQDM_DISABLE`` everywhere, Jupyter widgets included."""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable, desc: str | None = None, enabled: bool = True, **kwargs) -> tqdm:
    """A ``tqdm.auto`` bar over ``iterable``, off when ``enabled`` is False or ``TQDM_DISABLE`` is set.

    tqdm reads ``TQDM_DISABLE`` in the terminal but its notebook widget does not, and executed notebooks
    would otherwise store a frozen "0%" widget in their outputs.
    """
    disabled = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(iterable, desc=desc, disable=disabled, **kwargs)
