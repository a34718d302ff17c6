"""``python -m diffbook``: see :mod:`diffbook.cli`."""

from diffbook.cli import main

raise SystemExit(main())
