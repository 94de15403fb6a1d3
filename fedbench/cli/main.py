"""The ``fedbench`` console script: every command registered on one typer app, and the entry point."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from fedbench.cli import checkpoints, listing, memory, partition, report, run, sweep  # noqa: F401  (each registers its command)
from fedbench.cli.common import app, interrupted_line, print_error
from fedbench.errors import FedbenchError

__all__ = ["app", "main"]


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args``: the arguments after ``fedbench``; default: ``sys.argv``).

    The command line is parsed without click's standalone mode so that a mistyped flag, value or
    command is one ``error:`` line like every other mistake, instead of click's usage box."""
    try:
        code = app(args=args, prog_name="fedbench", standalone_mode=False)
    except TyperException as exc:  # a bad flag, value or command name (typer's click errors)
        context = getattr(exc, "ctx", None)
        if context is not None and not str(exc).strip():  # `fedbench` alone: the help, as click shows it
            typer.echo(context.get_help())
        else:
            print_error(usage_line(exc))
        sys.exit(getattr(exc, "exit_code", 2))
    except typer.Abort:  # Ctrl-C while the parser itself was running (it re-raises it so)
        sys.exit(interrupted_line(KeyboardInterrupt()))
    except FedbenchError as exc:  # errors raised outside a command body
        print_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt as exc:  # while the command line itself is being set up
        sys.exit(interrupted_line(exc))
    # A command's typer.Exit(code) is returned outside standalone mode; exit as click would.
    sys.exit(code if isinstance(code, int) else 0)


def usage_line(exc: TyperException) -> str:
    """click's message, which already says what was wrong ("No such option: --roudns Did you mean
    --rounds?"), and where the right flags are listed."""
    format_message = getattr(exc, "format_message", None)
    message = " ".join((format_message() if callable(format_message) else str(exc)).split())
    context = getattr(exc, "ctx", None)
    command = context.command_path if context is not None else "fedbench"
    return f"{message} (see '{command} --help')"


if __name__ == "__main__":
    main()
