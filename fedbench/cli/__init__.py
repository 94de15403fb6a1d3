"""The fedbench command line: one module per command, shared pieces in common.py."""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def launch() -> None:
    """The ``fedbench`` console script. It loads the command line itself, so that a Ctrl-C while
    the commands (and torch) are still being imported is one line and exit code 130, like a
    Ctrl-C at any later moment, not a traceback."""
    try:
        from fedbench.cli.main import main as run_command  # lazy: the import itself is what a Ctrl-C may cut
    except KeyboardInterrupt:
        sys.stderr.write("interrupted before a run was created; nothing was logged\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    run_command()
