"""User mistakes versus bugs at the command line.

A wrong option, a missing or mismatched checkpoint directory, an unusable data file: the user can fix these, and a
Python traceback only hides the one line that says how. Such errors derive from :class:`UserError`; entry points run
through :func:`run_cli`, which prints that line and exits 2 (the usage-error code argparse uses). Anything else is a
bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Something the user passed cannot work; the message names it (file, record, option) and what to do."""


def run_cli(main: Callable[[], int | None]) -> int:
    """`main()`'s exit code, or 2 after printing `error: <message>` for a :class:`UserError`."""
    try:
        return main() or 0
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
