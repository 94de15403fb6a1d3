"""``fedbench sweep GRID.yaml``: run a grid of configs, skipping finished cells.

Registered on the main ``app`` by an import at the end of :mod:`fedbench.cli.main`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fedbench.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    app,
    err,
    fail,
    out,
    setup_logging,
    sigterm_raises,
)
from fedbench.config import check_writable
from fedbench.errors import ConfigError, FedbenchError


@app.command("sweep")
def sweep_command(
    grid_file: Annotated[str, typer.Argument(help="Grid YAML: experiment, base (a run config), axes (dotted key: list of values), cases (settings that go together); docs/sweeps.md.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and their run keys; run nothing.")] = False,
    rerun: Annotated[bool, typer.Option("--rerun", help="Run cells again even if a FINISHED run exists.")] = False,
    max_parallel: Annotated[int, typer.Option(help="Cells run at once, each in its own process.")] = 1,
    executor: Annotated[str | None, typer.Option(help="Where cells run: serial (here), process (--max-parallel processes; the default when > 1) or ray (Ray tasks; $RAY_ADDRESS for a cluster).")] = None,
    gpus_per_cell: Annotated[float | None, typer.Option(help="GPUs each cuda cell asks Ray for (--executor ray only; default: the grid's gpus_per_cell, else 1): a share such as 0.25 packs four cells on a GPU; above 1, whole GPUs.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for every cell (else the grid's, else the default).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Run every cell of a grid; a failing cell is recorded as FAILED and never stops the others."""
    from fedbench import sweep  # lazy: torch loads only when a grid runs

    setup_logging(verbose)
    try:
        with sigterm_raises():
            if max_parallel < 1:
                raise ConfigError(f"--max-parallel ({max_parallel}) must be >= 1")
            sweep.check_gpu_option(gpus_per_cell, sweep.resolve_executor(executor, max_parallel))
            if dry_run:
                _dry_run(grid_file)
                return
            grid = sweep.load_grid(grid_file)
            # lazy: torch loads only when a grid runs
            from fedbench.core.checkpoint import checkpoint_dir

            check_writable(checkpoint_dir(), "checkpoint folder", "set FEDBENCH_CHECKPOINTS to a writable folder")

            def show(cell: sweep.Cell, outcome: sweep.CellOutcome) -> None:
                colour = {"FINISHED": "green", "SKIPPED": "cyan", "NA": "yellow", "FAILED": "red"}[outcome.status]
                detail = f" accuracy {outcome.final_accuracy:.4f}" if outcome.final_accuracy is not None else ""
                detail += f" — {outcome.reason}" if outcome.reason else ""
                if outcome.resumed_after_round is not None:
                    detail += f" (resumed run {outcome.run_id} after round {outcome.resumed_after_round})"
                err.print(f"[{colour}]{outcome.status:8}[/{colour}] #{cell.index} {cell.label}{detail}", highlight=False)

            outcomes = sweep.run_grid(
                grid, rerun=rerun, max_parallel=max_parallel, tracking_uri=tracking_uri, on_outcome=show,
                executor=executor, gpus_per_cell=gpus_per_cell,
            )
    except FedbenchError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt as exc:  # the cell that was running is marked KILLED by the engine
        what, code = (("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(exc, Terminated)
                      else ("interrupted", EXIT_INTERRUPTED))
        err.print(f"[yellow]{what}[/yellow]: finished cells are logged and a running cell is marked KILLED; "
                  "run the sweep again to continue", highlight=False, soft_wrap=True)
        raise typer.Exit(code=code) from None
    totals = sweep.summarize(outcomes)
    table = Table(title=f"sweep '{grid.experiment}'")
    for column in ("done", "skipped", "NA (PR 0)", "failed", "run time"):
        table.add_column(column, justify="right")
    table.add_row(*(str(totals[k]) for k in ("done", "skipped", "na", "failed")), f"{totals['seconds']:.1f} s")
    out.print(table)
    if totals["failed"]:
        raise typer.Exit(code=1)


def _dry_run(grid_file: str) -> None:
    """List the cells one line each, as each is validated, so a large grid shows progress at once."""
    from fedbench import sweep  # lazy: torch loads only when a grid runs

    grid = sweep.read_grid(grid_file)
    out.print(f"{grid.size} cells of experiment '{grid.experiment}' (#, cell, run key):", highlight=False)
    first: dict[str, int] = {}  # run key -> the cell that runs it
    for cell in grid.cells():
        key = cell.config.run_key
        same = f"\t(the same run as cell #{first[key]}, run once)" if key in first else ""
        first.setdefault(key, cell.index)
        out.print(f"{cell.index}\t{cell.label}\t{key}{same}", highlight=False, soft_wrap=True)
