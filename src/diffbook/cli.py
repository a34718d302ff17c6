"""The ``python -m diffbook`` command line: one subcommand per task.

- ``notebooks [PATHS...]``: execute notebooks in place and save their outputs (directories expand to the
  ``*.ipynb`` files inside them, sorted; default ``notebooks``).
- ``exercises [--src notebooks] [--out students]``: write the students' copies of the notebooks.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from diffbook.profiles import PROFILES, current_profile

# Subcommands import their modules when they run: the notebook tools need the `book` extra, which a
# training cluster does not install.


def _notebooks(args: argparse.Namespace) -> int:
    from diffbook.notebooks import execute_notebooks, expand_notebook_paths

    paths = expand_notebook_paths(args.paths)
    if not paths:
        print(f"No notebooks in {', '.join(args.paths)}.")
        return 0
    profile = args.profile or current_profile()
    seconds = execute_notebooks(paths, profile=profile, timeout=args.timeout)
    print(f"{len(seconds)} notebook(s) in {sum(seconds.values()):.1f} s")
    return 0


def _exercises(args: argparse.Namespace) -> int:
    from diffbook.notebooks import write_student_copies

    written = write_student_copies(args.src, args.out)
    print(f"Wrote {len(written)} student notebook(s) to {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each subcommand stores the function that runs it as ``run``."""
    parser = argparse.ArgumentParser(
        prog="python -m diffbook", description="The diffbook tools, one subcommand per task."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    notebooks = commands.add_parser("notebooks", help="execute notebooks in place and save their outputs")
    notebooks.add_argument("paths", nargs="*", default=["notebooks"], help="notebooks or directories")
    notebooks.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="run profile for the kernel (default: $DIFFBOOK_PROFILE, else book)",
    )
    notebooks.add_argument("--timeout", type=int, default=900, help="seconds any one cell may run")
    notebooks.set_defaults(run=_notebooks)

    exercises = commands.add_parser("exercises", help="write students' copies with the solutions removed")
    exercises.add_argument("--src", default="notebooks", help="directory of solution notebooks")
    exercises.add_argument("--out", default="students", help="directory for the students' copies")
    exercises.set_defaults(run=_exercises)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)
