"""The ``fedbench`` command line. The only place that catches :class:`FedbenchError`:
it prints one red line and exits with code 2.

Any other exception is a bug; it is one line too (exit code 1) unless ``--verbose`` asks for
its traceback, so that what a user sees is always the cause, not the call stack. Ctrl-C and
SIGTERM are one line as well (exit codes 130 and 143).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from fedbench import registry
from fedbench.config import (
    DataConfig,
    FleetConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_writable,
    dotted_to_nested,
    make_config,
)
from fedbench.errors import ConfigError, FedbenchError
from fedbench.worker_start import start_early

# Set by each command's --verbose (through _setup_logging): show tracebacks of unexpected errors.
_verbose = False
# Exit codes of a run stopped by Ctrl-C (128 + SIGINT) and by SIGTERM (128 + SIGTERM).
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


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


def _print_error(message: str) -> None:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)  # keep [ray] etc.


def _interrupted_line(exc: KeyboardInterrupt, run_id: str | None = None, resuming: str | None = None) -> int:
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


class _Commands(TyperGroup):
    """The top-level command group: an unexpected exception is one line (exit code 1) unless
    ``--verbose`` was given, and Ctrl-C outside a run is one line (exit code 130)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except FedbenchError as exc:  # raised outside a command's own handler
            _print_error(str(exc))
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:  # a command without a run of its own: nothing to mark
            terminated = isinstance(exc, Terminated)
            err.print(f"[yellow]{'terminated (SIGTERM)' if terminated else 'interrupted'}[/yellow]", highlight=False)
            raise typer.Exit(code=EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from None
        except Exception as exc:
            if _verbose:
                raise
            reason = " ".join(str(exc).split())
            _print_error(f"unexpected {type(exc).__name__}{': ' + reason if reason else ''} "
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
err = Console(stderr=True)
out = Console()

_D, _M, _T, _R = DataConfig(), ModelConfig(), TrainConfig(), RunConfig()


def _default(value: Any) -> str:
    return f" (default: {value})"


def _fail(exc: FedbenchError) -> typer.Exit:
    _print_error(str(exc))
    return typer.Exit(code=2)


def _parse_opts(pairs: list[str]) -> dict[str, Any]:
    """``--opt key=value`` pairs; values are read as YAML scalars (0.1, true, [1, 2])."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--opt {pair!r} must look like key=value, e.g. --opt mu=0.01")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--opt {pair!r}: value is not a valid YAML scalar or list") from exc
    return options


def _setup_logging(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
        force=True,
    )


@app.command()
def run(
    method: Annotated[str | None, typer.Option(help="Method name (see 'fedbench list methods')." + _default(_R.method))] = None,
    dataset: Annotated[str | None, typer.Option(help="Data set name." + _default(_D.dataset))] = None,
    model: Annotated[str | None, typer.Option(help="Model architecture." + _default(_M.name))] = None,
    width: Annotated[float | None, typer.Option(help="Width multiplier of the model, in (0, 1]." + _default(_M.width))] = None,
    partition: Annotated[str | None, typer.Option(help="Partitioner: iid, dirichlet, ..." + _default(_D.partition))] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration (> 0; smaller = more non-IID)." + _default(_D.alpha))] = None,
    clients: Annotated[int | None, typer.Option(help="Number of clients (devices)." + _default(_D.num_clients))] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="Clients selected each round (K)." + _default(_R.clients_per_round))] = None,
    rounds: Annotated[int | None, typer.Option(help="Communication rounds." + _default(_R.rounds))] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round (E)." + _default(_T.local_epochs))] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size (B)." + _default(_T.batch_size))] = None,
    lr: Annotated[float | None, typer.Option(help="Local SGD learning rate." + _default(_T.lr))] = None,
    momentum: Annotated[float | None, typer.Option(help="Local SGD momentum." + _default(_T.momentum))] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Local SGD weight decay." + _default(_T.weight_decay))] = None,
    weighting: Annotated[str | None, typer.Option(help="Server averaging: uniform or samples." + _default(_R.weighting))] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N rounds (and after the last)." + _default(_R.eval_every))] = None,
    info_plane: Annotated[int | None, typer.Option(help="Log nHSIC of every block output on N test images per class at evaluation rounds (Fig. 2; 0: off)." + _default(_R.info_plane))] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random draw." + _default(_R.seed))] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads." + _default(_R.threads))] = None,
    device: Annotated[str | None, typer.Option(help="Where local training and evaluation compute: cpu, cuda or cuda:N (docs/gpu.md)." + _default(_R.device))] = None,
    executor: Annotated[str | None, typer.Option(help="Where local updates run: serial, process or ray (docs/executors.md)." + _default(_R.executor))] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes or Ray actors of the process/ray executor." + _default(_R.workers))] = None,
    executor_threads: Annotated[int | None, typer.Option(help="torch threads per local update (default: threads // workers; serial: threads).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder holding the data set (else $FEDBENCH_DATA, cache, system folders).")] = None,
    fleet: Annotated[str | None, typer.Option(help="Device fleet profile (see 'fedbench list fleets')." + _default(FleetConfig().profile))] = None,
    low_mb: Annotated[int | None, typer.Option(help="uniform-mb fleet: smallest memory budget, MiB." + _default(FleetConfig().low_mb))] = None,
    high_mb: Annotated[int | None, typer.Option(help="uniform-mb fleet: largest memory budget, MiB." + _default(FleetConfig().high_mb))] = None,
    opt: Annotated[list[str] | None, typer.Option(help="Method option key=value (repeatable), e.g. --opt mu=0.01.")] = None,
    config: Annotated[str | None, typer.Option(help="YAML run config; flags given here override it.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else ./mlflow.db).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name." + _default("fedbench"))] = None,
    run_name: Annotated[str | None, typer.Option(help="MLflow run name.")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    keep_checkpoint: Annotated[bool | None, typer.Option("--keep-checkpoint", help="Keep the run's checkpoint after it finishes (default: removed once the run is recorded FINISHED).")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the MLflow run RUN_ID from its last checkpoint (its own config; other flags but --tracking-uri and the executor ones are ignored).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Train one method on one data set and log the run to MLflow."""
    from fedbench.tracking import NullTracker
    from fedbench.tracking_process import ProcessTracker

    _setup_logging(verbose)
    overrides = dotted_to_nested(
        {
            "method": method, "data.dataset": dataset, "data.partition": partition, "data.alpha": alpha,
            "data.num_clients": clients, "data.data_dir": data_dir, "model.name": model, "model.width": width,
            "train.local_epochs": local_epochs, "train.batch_size": batch_size, "train.lr": lr,
            "train.momentum": momentum, "train.weight_decay": weight_decay, "weighting": weighting,
            "clients_per_round": clients_per_round, "rounds": rounds, "eval_every": eval_every,
            "info_plane": info_plane,
            "seed": seed, "threads": threads, "device": device, "tracking.uri": tracking_uri,
            "executor": executor, "workers": workers, "executor_threads": executor_threads,
            "tracking.experiment": experiment, "tracking.run_name": run_name, "tracking.keep_checkpoint": keep_checkpoint,
            "fleet.profile": fleet, "fleet.low_mb": low_mb, "fleet.high_mb": high_mb,
        }
    )
    tracker: Any = None
    try:
        with sigterm_raises():
            if opt:
                overrides["options"] = _parse_opts(opt)
            if resume is not None:
                if not resume.strip():
                    raise ConfigError("--resume needs a run id, got an empty one; copy it from the output of "
                                      "'fedbench run' or from mlflow ui")
                cfg, tracker = _resumable_run(resume, tracking_uri)
                execution = {"executor": executor, "workers": workers, "executor_threads": executor_threads}
                cfg = dataclasses.replace(cfg, **{k: v for k, v in execution.items() if v is not None})
            else:
                cfg = make_config(config, overrides)
                _check_data_dir(cfg.data.data_dir)
                # Started before torch is imported, so MLflow's start-up overlaps the run's (tracking_process.py).
                tracker = (
                    NullTracker()
                    if no_tracking or not cfg.tracking.enabled
                    else ProcessTracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name)
                )
            if not isinstance(tracker, NullTracker) and cfg.tracking.checkpoint_every:
                from fedbench.checkpoint import checkpoint_dir

                check_writable(checkpoint_dir(), "checkpoint folder",
                               "set FEDBENCH_CHECKPOINTS to a writable folder (or tracking.checkpoint_every: 0)")
            if cfg.executor == "process":  # workers' imports overlap the server's (worker_start.py)
                start_early()
            from fedbench import engine

            with _RoundProgress(cfg) as progress:
                result = engine.run(cfg, tracker=tracker, on_round=progress.update,
                                    resume_run_id=resume or None)
    except FedbenchError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt as exc:
        raise typer.Exit(code=_interrupted_line(exc, getattr(tracker, "run_id", None), resume)) from None
    finally:
        close = getattr(tracker, "close", None)
        if close is not None:
            close()  # a run that failed before it started leaves no logging helper behind
    accuracy = result.metric("eval/accuracy")
    summary = f"{cfg.method} on {cfg.data.dataset}: final accuracy {accuracy[-1]:.4f}, best {max(accuracy):.4f}"
    run_id = getattr(tracker, "run_id", None)
    out.print(summary + (f" (MLflow run {run_id}, experiment '{cfg.tracking.experiment}')" if run_id else ""))


def _check_data_dir(data_dir: str | None) -> None:
    """A file given where the data set's folder belongs is named as such (not "does not exist")."""
    if data_dir and Path(data_dir).expanduser().is_file():
        raise ConfigError(f"--data-dir {data_dir} is a file, expected a folder holding the data set")


def _resumable_run(run_id: str, tracking_uri: str | None) -> tuple[RunConfig, Any]:
    """The config of an unfinished MLflow run and a tracker attached to its store."""
    import tempfile
    from pathlib import Path

    from fedbench.tracking import MlflowTracker, require_store

    require_store(tracking_uri)  # a mistyped store path is named, not created empty
    tracker = MlflowTracker(tracking_uri)
    text, status = tracker.run_config_yaml(run_id)
    if status == "FINISHED":
        raise ConfigError(f"run {run_id} already FINISHED; nothing to resume (start a new run instead)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        cfg = make_config(path, {"tracking": {"uri": tracking_uri}} if tracking_uri else None)
    tracker.experiment = cfg.tracking.experiment
    return cfg, tracker


class _RoundProgress:
    """A rich progress bar on a terminal; one log line per evaluated round otherwise."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.interactive = err.is_terminal
        self._progress: Any = None

    def __enter__(self) -> _RoundProgress:
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("round"), MofNCompleteColumn(), BarColumn(),
                TextColumn("acc {task.fields[acc]}  loss {task.fields[loss]}"), TimeElapsedColumn(),
                console=err, transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("rounds", total=self.config.rounds, acc="-", loss="-")
        return self

    def update(self, result: Any) -> None:
        acc = result.metrics.get("eval/accuracy")
        loss = result.metrics.get("train/loss")
        if self._progress is not None:
            fields = {"loss": f"{loss:.3f}" if loss is not None else "-"}
            if acc is not None:
                fields["acc"] = f"{acc:.4f}"
            self._progress.update(self._task, advance=1, **fields)
        elif acc is not None:
            err.print(
                f"round {result.round_idx + 1}/{self.config.rounds}  accuracy {acc:.4f}  "
                f"train loss {loss if loss is not None else float('nan'):.4f}  "
                f"{result.metrics['time/round_s']:.1f}s",
                highlight=False,
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class Kind(StrEnum):
    methods = "methods"
    datasets = "datasets"
    models = "models"
    partitioners = "partitioners"
    fleets = "fleets"


@app.command("list")
def list_plugins(
    kind: Annotated[Kind, typer.Argument(help="What to list.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    input_shape: Annotated[str, typer.Option(help="Models: input shape C,H,W for parameter and FLOP counts.")] = "3,32,32",
    num_classes: Annotated[int, typer.Option(help="Models: number of classes.")] = 10,
    width: Annotated[float, typer.Option(help="Models: width multiplier, in (0, 1].")] = 1.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details (and tracebacks of unexpected errors).")] = False,
) -> None:
    """List registered methods, datasets, models, partitioners or fleet profiles."""
    _setup_logging(verbose)
    try:
        infos = registry.available(kind.value)
    except FedbenchError as exc:
        raise _fail(exc) from None
    rows = [
        {"name": i.name, "object": i.value, "distribution": i.distribution, "builtin": i.builtin}
        | ({"error": i.conflict} if i.conflict else {})  # printed below the table
        for i in infos
    ]
    if kind is Kind.models:
        from fedbench.models.summary import summarize_rows

        try:
            rows = summarize_rows(rows, input_shape, num_classes, width)
        except FedbenchError as exc:
            raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({kind.value: rows}))
        return
    table = Table(title=f"fedbench {kind.value}")
    for column in ("name", "object", "from"):
        table.add_column(column)
    model_columns = ("parameters", "forward GFLOPs", "blocks") if kind is Kind.models else ()
    for column in model_columns:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [row["name"], row["object"], "built-in" if row["builtin"] else row["distribution"]]
        if model_columns:
            cells += (
                ["-", "-", "-"]
                if "error" in row
                else [f"{row['parameters']:,}", f"{row['forward_flops'] / 1e9:.3f}", str(row["num_blocks"])]
            )
        table.add_row(*cells)
    out.print(table)
    for row in rows:
        if "error" in row:
            out.print(f"[yellow]{row['name']}[/yellow]: {row['error']}", highlight=False, soft_wrap=True)


import fedbench.cli_checkpoints  # noqa: E402, F401  (registers `fedbench checkpoints` on app)
import fedbench.cli_memory  # noqa: E402, F401  (registers `fedbench memory` on app)
import fedbench.cli_partition  # noqa: E402, F401  (registers `fedbench partition` on app)
import fedbench.cli_report  # noqa: E402, F401  (registers `fedbench report` on app)
import fedbench.cli_sweep  # noqa: E402, F401  (registers `fedbench sweep` on app)


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args``: the arguments after ``fedbench``; default: ``sys.argv``)."""
    try:
        app(args=args, prog_name="fedbench")
    except FedbenchError as exc:  # errors raised outside a command body
        _print_error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt as exc:  # while the command line itself is being set up
        sys.exit(_interrupted_line(exc))


if __name__ == "__main__":
    main()
