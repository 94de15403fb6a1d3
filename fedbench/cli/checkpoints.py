"""``fedbench checkpoints list|prune``: see and clean the resumable checkpoints of runs.

A run's checkpoint is removed when the run is recorded FINISHED, so what remains belongs to
runs that were cut short (resumable with ``fedbench run --resume RUN_ID``), runs started with
``--keep-checkpoint``, or runs whose store was deleted. Registered on the main ``app`` by an
import at the end of :mod:`fedbench.cli.main`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fedbench.cli.common import app, fail, out
from fedbench.errors import ConfigError, FedbenchError

checkpoints_app = typer.Typer(help="List and prune the resumable checkpoints of runs ($FEDBENCH_CHECKPOINTS).",
                              no_args_is_help=True)
app.add_typer(checkpoints_app, name="checkpoints")


_JSON_HELP = ('Print {"checkpoints": [...]} as JSON, one object per checkpoint: run_id, path, method, round, '
              "bytes, modified, and unreadable (why fedbench would refuse the file; null when it would not).")


@checkpoints_app.command("list")
def list_command(
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Every checkpoint with its run id, method, last finished round, size and age (newest first).

    Each file gets the checks ``fedbench run --resume`` makes before loading it (header, format,
    payload checksum); one that fails them is listed unreadable, with the reason."""
    from fedbench.core import checkpoint  # lazy: torch loads only when a checkpoint command runs
    from fedbench.memory.model import format_bytes

    found = list(checkpoint.stored())
    if as_json:
        out.print_json(json.dumps({"checkpoints": [
            {"run_id": item.run_id, "path": str(item.path), "method": item.method,
             "round": None if item.round_idx is None else item.round_idx + 1,
             "bytes": item.size_bytes, "modified": item.modified, "unreadable": item.problem}
            for item in found]}))
        return
    if not found:
        out.print(f"no checkpoints in {checkpoint.checkpoint_dir()}")
        return
    table = Table(title=f"checkpoints in {checkpoint.checkpoint_dir()}")
    table.add_column("run id", no_wrap=True, min_width=32)  # a run id is copied whole into --resume
    for column in ("method", "after round", "size", "written"):
        table.add_column(column)
    for item in found:
        rounds = "unreadable" if item.round_idx is None else str(item.round_idx + 1)
        written = datetime.fromtimestamp(item.modified).strftime("%Y-%m-%d %H:%M")
        table.add_row(item.run_id, item.method, rounds, format_bytes(item.size_bytes), written)
    out.print(table)
    total = sum(item.size_bytes for item in found)
    out.print(f"{len(found)} checkpoint(s), {format_bytes(total)}")
    refused = [item for item in found if item.problem is not None]
    for item in refused:
        out.print(f"unreadable: {escape(item.problem)}", highlight=False, soft_wrap=True)
    if refused:
        out.print(f"{len(refused)} unreadable checkpoint(s): fedbench checkpoints prune --unreadable removes them",
                  highlight=False)


@checkpoints_app.command("prune")
def prune_command(
    finished: Annotated[bool, typer.Option("--finished", help="Remove checkpoints of runs the tracking store records as FINISHED.")] = False,
    older_than: Annotated[float | None, typer.Option(help="Remove checkpoints written more than DAYS days ago.", metavar="DAYS")] = None,
    unreadable: Annotated[bool, typer.Option("--unreadable", help="Remove files fedbench would refuse (damaged, foreign, older format).")] = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow store that --finished looks runs up in (else $MLFLOW_TRACKING_URI, else ./mlflow.db).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
) -> None:
    """Remove the checkpoints that match any of the given criteria (at least one is needed).

    --unreadable removes what ``fedbench checkpoints list`` marks unreadable: every file that fails
    the checks ``fedbench run --resume`` makes before loading (header, format, payload checksum)."""
    from fedbench.core import checkpoint  # lazy: torch loads only when a checkpoint command runs

    try:
        if not (finished or unreadable or older_than is not None):
            raise ConfigError("say what to prune: --finished, --older-than DAYS and/or --unreadable")
        if older_than is not None and not older_than >= 0:
            raise ConfigError(f"--older-than ({older_than}) must be a number of days >= 0")
        statuses = _run_statuses(tracking_uri) if finished else None
        cutoff = time.time() - older_than * 86400 if older_than is not None else None
        removed = 0
        for item in checkpoint.stored():
            reasons = []
            if statuses is not None and statuses(item.run_id) == "FINISHED":
                reasons.append("run FINISHED")
            if cutoff is not None and item.modified < cutoff:
                reasons.append(f"older than {older_than:g} days")
            if unreadable and item.problem is not None:
                reasons.append("unreadable")
            if reasons:
                if not dry_run:
                    item.path.unlink(missing_ok=True)
                removed += 1
                out.print(f"{'would remove' if dry_run else 'removed'} {item.path.name} ({', '.join(reasons)})",
                          highlight=False)
        out.print(f"{removed} checkpoint(s) {'would be ' if dry_run else ''}removed", highlight=False)
    except FedbenchError as exc:
        raise fail(exc) from None


def _run_statuses(tracking_uri: str | None) -> Callable[[str], str | None]:
    """A lookup run id -> status in the tracking store (None: no such run there).

    Read through :class:`~fedbench.reports.runs.RunStore`, like the reports: a sqlite store that
    does not exist is an error (pruning never creates a store), and one that cannot be opened or
    read (a junk file, a folder, a server that is down) is one line naming it and the fix. A failed
    lookup is never taken for "no such run", which would keep every checkpoint without a word."""
    from fedbench.reports.runs import RunStore  # lazy: MLflow and pandas load only for --finished

    return RunStore(tracking_uri).status
