"""``fedbench sweep GRID.yaml``: run a grid of configs, skipping finished cells.

Registered on the main ``app`` by an import at the end of :mod:`fedbench.cli`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from fedbench.cli import _fail, _setup_logging, app, err, out
from fedbench.errors import FedbenchError


@app.command("sweep")
def sweep_command(
    grid_file: Annotated[str, typer.Argument(help="Grid YAML: experiment, base (a run config), axes (dotted key: [values]).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and their run keys; run nothing.")] = False,
    rerun: Annotated[bool, typer.Option("--rerun", help="Run cells again even if a FINISHED run exists.")] = False,
    max_parallel: Annotated[int, typer.Option(help="Cells run at once, each in its own process.")] = 1,
    executor: Annotated[str | None, typer.Option(help="Where cells run: serial (here), process (--max-parallel processes; the default when > 1) or ray (Ray tasks; $RAY_ADDRESS for a cluster).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI for every cell (else the grid's, else the default).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Run every cell of a grid; a failing cell is recorded as FAILED and never stops the others."""
    from fedbench import sweep

    _setup_logging(verbose)
    try:
        if max_parallel < 1:
            from fedbench.errors import ConfigError

            raise ConfigError(f"--max-parallel ({max_parallel}) must be >= 1")
        grid = sweep.load_grid(grid_file)
        if dry_run:
            table = Table(title=f"{len(grid.cells)} cells of experiment '{grid.experiment}'")
            for column in ("#", "cell", "run key"):
                table.add_column(column)
            for cell in grid.cells:
                table.add_row(str(cell.index), cell.label, cell.config.run_key)
            out.print(table)
            return

        def show(cell: sweep.Cell, outcome: sweep.CellOutcome) -> None:
            colour = {"FINISHED": "green", "SKIPPED": "cyan", "FAILED": "red"}[outcome.status]
            detail = f" accuracy {outcome.final_accuracy:.4f}" if outcome.final_accuracy is not None else ""
            detail += f" — {outcome.reason}" if outcome.status == "FAILED" else ""
            if outcome.resumed_after_round is not None:
                detail += f" (resumed run {outcome.run_id} after round {outcome.resumed_after_round})"
            err.print(f"[{colour}]{outcome.status:8}[/{colour}] #{cell.index} {cell.label}{detail}", highlight=False)

        outcomes = sweep.run_grid(
            grid, rerun=rerun, max_parallel=max_parallel, tracking_uri=tracking_uri, on_outcome=show, executor=executor
        )
    except FedbenchError as exc:
        raise _fail(exc) from None
    totals = sweep.summarize(outcomes)
    table = Table(title=f"sweep '{grid.experiment}'")
    for column in ("done", "skipped", "failed", "run time"):
        table.add_column(column, justify="right")
    table.add_row(str(totals["done"]), str(totals["skipped"]), str(totals["failed"]), f"{totals['seconds']:.1f} s")
    out.print(table)
    if totals["failed"]:
        raise typer.Exit(code=1)
