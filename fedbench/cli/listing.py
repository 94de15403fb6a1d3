"""``fedbench list``: the registered methods, data sets, models, partitioners and fleets."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from fedbench import registry

# Set by each command's --verbose (through setup_logging): show tracebacks of unexpected errors.
from fedbench.cli.common import app, describe_schedule, fail, out, setup_logging
from fedbench.config import PRESETS, preset_layer
from fedbench.errors import FedbenchError


class Kind(StrEnum):
    methods = "methods"
    datasets = "datasets"
    models = "models"
    partitioners = "partitioners"
    fleets = "fleets"
    presets = "presets"


@app.command("list")
def list_plugins(
    kind: Annotated[Kind, typer.Argument(help="What to list.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    input_shape: Annotated[str, typer.Option(help="Models: input shape C,H,W for parameter and FLOP counts.")] = "3,32,32",
    num_classes: Annotated[int, typer.Option(help="Models: number of classes.")] = 10,
    width: Annotated[float, typer.Option(help="Models: width multiplier, in (0, 1].")] = 1.0,
    check: Annotated[bool, typer.Option("--check", help="Methods: import and check each one against the method contract (what a run does first).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details (and tracebacks of unexpected errors).")] = False,
) -> None:
    """List registered methods, datasets, models, partitioners, fleet profiles or training presets."""
    setup_logging(verbose)
    if kind is Kind.presets:
        _list_presets(as_json)
        return
    try:
        infos = registry.available(kind.value)
    except FedbenchError as exc:
        raise fail(exc) from None
    rows = [
        {"name": i.name, "object": i.value, "distribution": i.distribution, "builtin": i.builtin}
        | ({"error": i.conflict} if i.conflict else {})  # printed below the table
        for i in infos
    ]
    if kind is Kind.methods and check:
        for row in rows:
            if "error" not in row:
                problem = method_problem(row["name"])
                if problem:
                    row["error"] = problem
    if kind is Kind.models:
        # lazy: torch loads only to describe models
        from fedbench.reports.model_summary import summarize_rows

        try:
            rows = summarize_rows(rows, input_shape, num_classes, width)
        except FedbenchError as exc:
            raise fail(exc) from None
    broken = check and any("error" in row for row in rows)  # --check is a test: it fails like one
    if as_json:
        out.print_json(json.dumps({kind.value: rows}))
        if broken:
            raise typer.Exit(code=2)
        return
    table = Table(title=f"fedbench {kind.value}")
    for column in ("name", "object", "from", *(["check"] if kind is Kind.methods and check else [])):
        table.add_column(column)
    model_columns = ("parameters", "forward GFLOPs", "blocks") if kind is Kind.models else ()
    for column in model_columns:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [row["name"], row["object"], "built-in" if row["builtin"] else row["distribution"]]
        if kind is Kind.methods and check:
            cells.append("broken" if "error" in row else "ok")
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
    if broken:
        raise typer.Exit(code=2)


def _list_presets(as_json: bool) -> None:
    """The training values each preset gives each registered method (docs/protocol.md): in the
    table, the paper's common setting once and each method's own where it differs."""
    rows = []
    for info in registry.available("methods"):
        if info.conflict:
            continue
        for preset in PRESETS:
            try:
                train = preset_layer(preset, info.name)["train"]
            except FedbenchError as exc:
                raise fail(exc) from None
            rows.append({"method": info.name, "preset": preset, **train})
    if as_json:
        out.print_json(json.dumps({"presets": rows}))
        return
    paper = next((r for r in rows if r["preset"] == "paper"), None)
    if paper is None:
        out.print("no methods are registered")
        return
    values = {k: v for k, v in paper.items() if k not in ("method", "preset")}
    own = [r for r in rows if r["preset"] == "official" and {k: r[k] for k in values} != values]
    table = Table(title="fedbench presets (training values; flags override them)")
    for column in ("preset", "method", "optimizer", "lr", "lr schedule", "wd", "E", "B"):
        table.add_column(column, no_wrap=column != "lr schedule", min_width=14 if column == "lr schedule" else None)
    for row in [paper | {"method": "(all)"}, *own]:
        optimizer = "Adam" if row["optimizer"] == "adam" else f"SGD {row['momentum']:g}"
        table.add_row(row["preset"], row["method"], optimizer, f"{row['lr']:g}", describe_schedule(row),
                      f"{row['weight_decay']:g}", str(row["local_epochs"]), str(row["batch_size"]))
    out.print(table)
    out.print("SGD m: SGD with momentum m; wd: weight decay; E: local epochs; B: batch size; R: the run's rounds",
              highlight=False)
    same = sorted({r["method"] for r in rows} - {r["method"] for r in own})
    if same:
        out.print(f"official is paper for: {', '.join(same)}", highlight=False)



def method_problem(name: str) -> str | None:
    """Why method ``name`` cannot be used (its import or its contract fails), in one line; None if it can."""
    from fedbench.core.method import validate_method  # lazy: imports torch, only for --check

    try:
        registry.load("methods", name, validate=validate_method)
    except FedbenchError as exc:
        return str(exc)
    return None
