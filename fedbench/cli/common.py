"""What every ``fedbench`` command shares: the typer app, the consoles, the one-line error and
interruption handling, logging setup and the config defaults shown in ``--help``.

The command line is the only place that catches :class:`FedbenchError`: it prints one red line
and exits with code 2. Any other exception is a bug; it is one line too (exit code 1) unless
``--verbose`` asks for its traceback, so that what a user sees is always the cause, not the call
stack. Ctrl-C and SIGTERM are one line as well (exit codes 130 and 143).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from typer.core import TyperGroup

from fedbench.cli import EXIT_INTERRUPTED
from fedbench.config import (
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from fedbench.errors import ConfigError, FedbenchError

# Set by each command's --verbose (through setup_logging): show tracebacks of unexpected errors.
_verbose = False
# Exit codes of a run stopped by Ctrl-C (128 + SIGINT) and by SIGTERM (128 + SIGTERM).
EXIT_TERMINATED = 143  # after SIGTERM; 130 (EXIT_INTERRUPTED) after Ctrl-C


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that a run stops as on Ctrl-C: the engine
    marks it KILLED and the command exits with :data:`EXIT_TERMINATED`."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`Terminated` instead of ending the process at once,
    which would leave the tracked run RUNNING. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(_signum: int, _frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_error(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # keep [ray] etc.


def interrupted_line(exc: KeyboardInterrupt, run_id: str | None = None, resuming: str | None = None) -> int:
    """Print the one line for Ctrl-C or SIGTERM and return the exit code. Names the run only if
    one was created (or, with ``resuming``, reopened): before that, nothing was logged and
    nothing is marked KILLED."""
    what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(exc, Terminated) else (
        "interrupted", EXIT_INTERRUPTED)
    if run_id is None and resuming:
        err.print(f"[yellow]{what}[/yellow] before run {resuming} was reopened; it is left as it was",
                  highlight=False, soft_wrap=True)
    elif run_id is None:
        err.print(f"[yellow]{what}[/yellow] before a run was created; nothing was logged", highlight=False)
    else:
        err.print(f"[yellow]{what}[/yellow]: finished rounds are logged; run {run_id} is marked KILLED "
                  f"(continue it: fedbench run --resume {run_id})", highlight=False, soft_wrap=True)
    return code


def _is_usage_error(exc: Exception) -> bool:
    """A bad flag or value, an unknown command: click prints these with the usage line and exit
    code 2. typer may ship its own copy of click, whose exceptions are not ``click``'s classes, so
    they are recognised by click's protocol (an ``exit_code`` and a ``show`` method)."""
    return isinstance(getattr(exc, "exit_code", None), int) and callable(getattr(exc, "show", None))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not hit the closed pipe again."""
    silence(sys.stdout)


def silence(*streams: Any) -> None:
    """Point ``streams`` at /dev/null: their reader has gone (a closed pipe, `| head`, a dropped
    ssh connection), and what is still written there, buffered bytes included, has nowhere to go."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())


class _Commands(TyperGroup):
    """The top-level command group: an unexpected exception is one line (exit code 1) unless
    ``--verbose`` was given, and Ctrl-C outside a run is one line (exit code 130)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except FedbenchError as exc:  # raised outside a command's own handler
            print_error(str(exc))
            raise typer.Exit(code=2) from None
        except BrokenPipeError:  # the reader of our output stopped early (`| head`): no bug to report
            _silence_stdout()
            raise typer.Exit(code=1) from None  # click's own exit code for a closed pipe
        except KeyboardInterrupt as exc:  # a command without a run of its own: nothing to mark
            terminated = isinstance(exc, Terminated)
            err.print(f"[yellow]{'terminated (SIGTERM)' if terminated else 'interrupted'}[/yellow]", highlight=False)
            raise typer.Exit(code=EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
        except Exception as exc:
            if _is_usage_error(exc):
                raise  # click prints it with the usage line and exits 2
            if _verbose:
                raise
            reason = " ".join(str(exc).split())
            print_error(f"unexpected {type(exc).__name__}{': ' + reason if reason else ''} "
                         "(a bug in fedbench or a plugin; rerun with --verbose for the traceback)")
            raise typer.Exit(code=1) from None


app = typer.Typer(
    cls=_Commands,
    name="fedbench",
    help="Federated learning on memory-constrained devices: NeuLite and its baselines on one engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
class _Diagnostics(Console):
    """The stderr console: progress, warnings, errors. When its reader goes away (`2>&1 | head`, a
    dropped ssh connection) rich would end the program (SystemExit 1); a training run goes on
    instead, unheard, and finishes its rounds."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence(sys.stdout, sys.stderr)


err = _Diagnostics(stderr=True)
out = Console()

DATA_DEFAULTS, MODEL_DEFAULTS, TRAIN_DEFAULTS, RUN_DEFAULTS = DataConfig(), ModelConfig(), TrainConfig(), RunConfig()


def default_note(value: Any) -> str:
    return f" (default: {value})"


def fail(exc: FedbenchError) -> typer.Exit:
    print_error(str(exc))
    return typer.Exit(code=2)


def setup_logging(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
        force=True,
    )


def check_data_dir(data_dir: str | None) -> None:
    """A file given where the data set's folder belongs is named as such (not "does not exist");
    an empty --data-dir is refused rather than silently searching the default places."""
    if data_dir is not None and not data_dir.strip():
        raise ConfigError("--data-dir is empty; give the folder holding the data set, or leave the flag out")
    if data_dir and Path(data_dir).expanduser().is_file():
        raise ConfigError(f"--data-dir {data_dir} is a file, expected a folder holding the data set")


def describe_schedule(train: dict) -> str:
    """``train``'s lr schedule in a few words, milestones as fractions of the rounds R."""
    kind = train["lr_schedule"]
    floor = f", ≥ {train['lr_min']:g}" if train["lr_min"] else ""
    if kind == "exponential":
        return f"×{train['lr_decay']:g} a round{floor}"
    if kind == "multistep":
        at = ", ".join(f"{m:g}R" for m in train["lr_milestones"])
        return f"×{train['lr_decay']:g} at {at}{floor}"
    if kind == "cosine":
        return f"cosine{floor}"
    return "constant"


def describe_training(train: Any, epochs: bool = True) -> str:
    """A run's local training in one line: ``SGD, momentum 0.9, lr 0.1 (×0.1 at 0.375R, 0.625R), ...``."""
    schedule = describe_schedule(dataclasses.asdict(train))
    lr = f"lr {train.lr:g}" + ("" if schedule == "constant" else f" ({schedule})")
    optimizer = "Adam" if train.optimizer == "adam" else f"SGD, momentum {train.momentum:g}"
    if not epochs:  # what memory depends on: the optimizer and the batch
        return f"{optimizer}, batch {train.batch_size}"
    return (f"{optimizer}, {lr}, weight decay {train.weight_decay:g}, "
            f"{train.local_epochs} local epoch{'s' if train.local_epochs != 1 else ''}, batch {train.batch_size}")
