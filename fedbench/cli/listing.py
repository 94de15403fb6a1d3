"""``fedbench list``: the registered methods, data sets, models, partitioners and fleets."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from fedbench import registry

# Set by each command's --verbose (through setup_logging): show tracebacks of unexpected errors.
from fedbench.cli.common import app, fail, out, setup_logging
from fedbench.errors import FedbenchError


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
    setup_logging(verbose)
    try:
        infos = registry.available(kind.value)
    except FedbenchError as exc:
        raise fail(exc) from None
    rows = [
        {"name": i.name, "object": i.value, "distribution": i.distribution, "builtin": i.builtin}
        | ({"error": i.conflict} if i.conflict else {})  # printed below the table
        for i in infos
    ]
    if kind is Kind.models:
        # lazy: torch loads only to describe models
        from fedbench.reports.model_summary import summarize_rows

        try:
            rows = summarize_rows(rows, input_shape, num_classes, width)
        except FedbenchError as exc:
            raise fail(exc) from None
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
