"""The ``fedbench`` console script: every command registered on one typer app, and the entry point."""

from __future__ import annotations

import sys

from fedbench.cli import checkpoints, listing, memory, partition, report, run, sweep  # noqa: F401  (each registers its command)
from fedbench.cli.common import app, interrupted_line, print_error
from fedbench.errors import FedbenchError

__all__ = ["app", "main"]


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args``: the arguments after ``fedbench``; default: ``sys.argv``)."""
    try:
        app(args=args, prog_name="fedbench")
    except FedbenchError as exc:  # errors raised outside a command body
        print_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt as exc:  # while the command line itself is being set up
        sys.exit(interrupted_line(exc))


if __name__ == "__main__":
    main()
