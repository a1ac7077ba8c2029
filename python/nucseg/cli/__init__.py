"""Command-line entry points: one module per command; heavy imports stay inside the commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable


def run_guarded(
    run: Callable[[argparse.Namespace], int],
    args: argparse.Namespace,
    *,
    prog: str,
    errors: tuple[type[BaseException], ...],
    status: int,
    interrupted: str,
) -> int:
    """Run a command; a user error becomes one line on stderr and exit ``status``.

    ``errors`` are the exception types that mean bad input or a failed run (printed as
    ``PROG: error: MESSAGE``); Ctrl-C prints ``interrupted`` and exits 130.
    """
    try:
        return run(args)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (``nucseg models | head``): stop quietly, as Unix tools
        # do, and keep Python from complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except errors as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return status
