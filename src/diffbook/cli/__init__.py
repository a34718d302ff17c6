"""The ``python -m diffbook`` command line: one subcommand per task.

- ``notebooks [PATHS...]``: execute notebooks in place and save their outputs (directories expand to the
  ``*.ipynb`` files inside them, sorted; default ``notebooks``).
- ``exercises [--src notebooks] [--out exercises]``: write the students' copies of the notebooks;
  ``exercises --check NOTEBOOK...`` runs notebooks and prints PASS or FAIL per exercise (exit 1 on a failure).
- ``train --config NAME [key=value ...] [--run-dir DIR] [--dry-run] [--accept-changes]``: train from a config (see
  :mod:`diffbook.experiments.experiment`); resumes from ``DIR/checkpoint.pt`` when there is one, after checking
  that the config changes nothing but the steps and bookkeeping (:mod:`diffbook.experiments.run_dir`).
- ``sample --ckpt PATH --seeds 0-49999 --out DIR [--batch 256] [--config YAML] [--class-labels 0-9|random] [--vae ID]
  [key=value ...] [--dry-run]``: one image per seed, the same whatever the batch size or number of processes
  (see :mod:`diffbook.experiments.sampling`), with the config the checkpoint carries (or ``--config``) overridden
  (``sample.steps=50``, ``sample.sampler=ddim``); a latent model's samples are decoded by the VAE. PNGs, and
  ``samples.npz`` in the layout of ADM's evaluator (``arr_0`` images, ``arr_1`` labels).
- ``evaluate --samples DIR --ref NAME|DIR [--metrics fid,kid,is,prdc] [--features digits|inception] [--out JSON]``:
  feature-space metrics of samples against a dataset of the registry, a folder of images, or (``--ref-stats``)
  clean-fid's precomputed Inception statistics.
- ``fetch-inception [--from FILE]``: clean-fid's Inception weights into diffbook's cache (``$DIFFBOOK_CACHE``, else
  ``$XDG_CACHE_HOME/diffbook``), with their SHA-256, which ``evaluate --features inception`` checks before each use.
- ``stamp``: write ``diffbook.__version__`` and pyproject.toml's home URL into the notebooks' Colab cells and
  CITATION.cff (:mod:`diffbook.booktools.project`).
- ``pdf [HTML] [--out PDF]``: print the built book (``make pdf`` builds it as one page) with the system Chromium.
- ``train-feature-net digits [--out PATH] [--steps N]``: train the digits feature network that ``evaluate`` uses.
- ``sweep --config NAME --grid KEY=V1,V2 [--grid ...] --seeds 0-2 --out DIR [--samples N] [--jobs J] [key=value ...]``:
  one model per grid point and seed, trained, sampled and scored; ``DIR/table.md`` holds mean +- std per point
  (see :mod:`diffbook.experiments.sweep`). Finished runs are not redone.
- ``benchmark --suite toy|digits [--seeds 3] [--out DIR] [--jobs 2]``: the comparison chapter's suite, every
  method and combination on the same data, metrics and seeds, at the active profile's scale; writes
  ``DIR/results.json``, ``table.md`` and ``comparison.png`` (see :mod:`diffbook.experiments.comparison`). Resumable.
- ``export-diffusers --ckpt PATH --out DIR``: a Stable Diffusion run (``configs/sd21``) as diffusers loads it:
  ``DIR/unet`` and a DDIM ``DIR/scheduler`` that samples as the run's config does.
- ``precompute-latents --root DIR --out DIR [--data imagefolder] [--resolution 256] [--vae ID|PATH] [--flip]``:
  encode a dataset once with Stable Diffusion's VAE, for the latent models' configs (``data.name: latents``).

Errors a user can fix (a bad value, a missing or corrupt file, a run folder of another config, a loss that became
NaN) print one line, what went wrong and what to do, and exit with 2; ``DIFFBOOK_DEBUG=1`` shows their traceback.
Any other exception is a bug in diffbook and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from diffbook.cli.commands import default_run_dir
from diffbook.cli.parser import build_parser

__all__ = ["build_parser", "default_run_dir", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        if os.environ.get("DIFFBOOK_DEBUG"):
            raise
        print(f"python -m diffbook {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m diffbook {args.command}: interrupted; a run resumes from its checkpoint", file=sys.stderr)
        return 130


# What a user can fix: a value, a file (missing, unreadable, corrupt, no space left), a missing extra, a diverged
# loss. A TypeError, KeyError or RuntimeError is diffbook's own bug, and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError, FloatingPointError)


def _one_line(error: Exception) -> str:
    # An OSError's str() leads with "[Errno 17]", which tells a user nothing.
    filename, reason = getattr(error, "filename", None), getattr(error, "strerror", None)
    message = f"{filename}: {reason}" if isinstance(error, OSError) and filename and reason else str(error)
    return "; ".join(line.strip() for line in message.splitlines() if line.strip())
