"""``fedbench memory``: the memory model's peak per sub-model a method trains, and the PR under a
fleet, for one model and method or a table of several (rows from :mod:`fedbench.reports.memory_table`).
Registered on the main ``app`` by an import at the end of :mod:`fedbench.cli.main`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from fedbench import registry
from fedbench.cli.common import (
    DATA_DEFAULTS,
    MODEL_DEFAULTS,
    RUN_DEFAULTS,
    TRAIN_DEFAULTS,
    app,
    default_note,
    describe_training,
    fail,
    out,
    setup_logging,
)
from fedbench.config import (
    MAX_CLIENTS,
    PRESETS,
    TrainConfig,
    build_dataclass,
    parse_option_pairs,
    preset_layer,
)
from fedbench.errors import ConfigError, FedbenchError

_MIB = 1024 * 1024
_BYTE_COLUMNS = {"peak MiB": "peak_bytes", "params MiB": "params_bytes", "grads MiB": "grads_bytes",
                 "optimizer MiB": "optimizer_bytes", "activations MiB": "activations_bytes"}


def _names(given: str, kind: str) -> list[str]:
    """``resnet18``, ``resnet18,vgg11_bn`` or ``all`` (every registered one) as a list of names."""

    if given.strip() == "all":
        found = [info.name for info in registry.available(kind)]
        if not found:
            raise typer.BadParameter(f"no {kind} are registered; install fedbench (pip install -e .) for its entry points")
        return found
    names = [name.strip() for name in given.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter(f"no {kind} named; give a name, a comma-separated list or 'all'")
    return list(dict.fromkeys(names))


def _check_sizes(clients: int, jobs: int) -> None:
    """Refuse a fleet too large to hold (before it is drawn) and a negative worker count."""

    if jobs < 0:
        raise ConfigError(f"--jobs ({jobs}) must be >= 0 (0: one worker process per core, 1: none)")
    if clients < 1:
        raise ConfigError(f"--clients ({clients}) must be >= 1")
    if clients > MAX_CLIENTS:
        raise ConfigError(f"--clients ({clients}) is above {MAX_CLIENTS:,}, the most devices fedbench simulates "
                          "(the whole fleet is drawn in memory); lower --clients")


@app.command("memory")
def memory_command(
    model: Annotated[str, typer.Option(help="Model architecture (see 'fedbench list models'); several: a,b or all." + default_note(MODEL_DEFAULTS.name))] = MODEL_DEFAULTS.name,
    dataset: Annotated[str, typer.Option(help="Data set, for its input shape and classes." + default_note(DATA_DEFAULTS.dataset))] = DATA_DEFAULTS.dataset,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size (B); default: the preset's, else " + str(TRAIN_DEFAULTS.batch_size) + ".")] = None,
    preset: Annotated[str | None, typer.Option(help="Each method's batch size and optimizer from a training preset: paper or official (docs/protocol.md).")] = None,
    method: Annotated[str, typer.Option(help="Method whose sub-models to report; several: a,b or all." + default_note(RUN_DEFAULTS.method))] = RUN_DEFAULTS.method,
    fleet: Annotated[str, typer.Option(help="Fleet profile for the PR column (see 'fedbench list fleets').")] = "uniform-mb",
    width: Annotated[float, typer.Option(help="Width multiplier of the model, in (0, 1]." + default_note(MODEL_DEFAULTS.width))] = MODEL_DEFAULTS.width,
    clients: Annotated[int, typer.Option(help="Number of devices in the fleet." + default_note(DATA_DEFAULTS.num_clients))] = DATA_DEFAULTS.num_clients,
    seed: Annotated[int, typer.Option(help="Seed of the fleet draw." + default_note(RUN_DEFAULTS.seed))] = RUN_DEFAULTS.seed,
    low_mb: Annotated[int, typer.Option(help="uniform-mb: smallest budget, MiB." + default_note(100))] = 100,
    high_mb: Annotated[int, typer.Option(help="uniform-mb: largest budget, MiB." + default_note(900))] = 900,
    data_dir: Annotated[str | None, typer.Option(help="Folder of a data set whose shape is not built in.")] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes for several models/methods (0: one per core, 1: none).")] = 0,
    opt: Annotated[list[str] | None, typer.Option(help="Method option key=value (repeatable), as for 'fedbench run', e.g. --opt curriculum_loss=false; one method only.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"rows\": [...]} as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Peak training memory of each sub-model a method trains (no data, no GPU), and its PR under a fleet."""
    from fedbench.reports import memory_table  # lazy: torch loads only when the table is traced

    setup_logging(verbose)
    models, methods = _names(model, "models"), _names(method, "methods")
    try:
        _check_sizes(clients, jobs)
        options = _method_options(opt, methods)
        trains = {name: _training(name, preset, batch_size) for name in methods}
        if len(models) == len(methods) == 1:
            train = trains[methods[0]]
            rows = memory_table.memory_rows(models[0], dataset, train.batch_size, methods[0], fleet, width, clients,
                                            seed, low_mb, high_mb, data_dir, train=train,
                                            method_options=options.get(methods[0]))
        else:
            rows = memory_table.memory_table([(m, dataset, name) for m in models for name in methods],
                                             TRAIN_DEFAULTS.batch_size, fleet, jobs=jobs, trains=trains,
                                             method_options=options, width=width, clients=clients, seed=seed,
                                             low_mb=low_mb, high_mb=high_mb, data_dir=data_dir)
    except FedbenchError as exc:
        raise fail(exc) from None
    # A method that trains every device whatever its budget (vanilla FedAvg) logs PR 100 % in its
    # runs; here its column is the share of devices whose budget fits it, marked so.
    ignoring = {m for m in methods if getattr(_method_class(m), "ignores_memory", False) is True}
    for row in rows:
        row["ignores_memory"] = row.get("method", methods[0]) in ignoring
    if as_json:
        out.print_json(json.dumps({"rows": rows}))
        return
    several = len(models) * len(methods) > 1
    about = f"{', '.join(methods)} on {', '.join(models)}" if several else f"{method} on {model}"
    settings = {describe_training(t, epochs=False) for t in trains.values()}
    training = settings.pop() if len(settings) == 1 else f"each method's {preset} training"
    table = Table(title=f"{about} ({dataset}; {training}); PR under fleet '{fleet}'")
    for column in (["model", "method"] if several else []) + ["sub-model"]:
        table.add_column(column)
    for column in [*_BYTE_COLUMNS, "PR"]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            *([row["model"], row["method"]] if several else []),
            row["submodel"],
            *(f"{row[key] / _MIB:.1f}" for key in _BYTE_COLUMNS.values()),
            f"{100 * row['pr']:.0f} %" + (" *" if row["ignores_memory"] else ""),
        )
    out.print(table)
    if ignoring:
        out.print(f"* {', '.join(sorted(ignoring))} ignores memory budgets: its runs train every device (PR 100 %); "
                  "the column is the share of devices whose budget fits it", highlight=False)


def _method_class(name: str) -> Any:
    try:
        return registry.load("methods", name)
    except FedbenchError:  # the rows were computed, so the name loads; a plugin gone since: unmarked
        return None


def _method_options(pairs: list[str] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--opt`` pairs for the one method asked for (options are per method)."""
    if not pairs:
        return {}
    if len(methods) != 1:
        raise ConfigError(f"--opt sets options of one method, but {len(methods)} are asked for "
                          f"({', '.join(methods)}); give one --method with --opt")
    return {methods[0]: parse_option_pairs(pairs)}


def _training(method: str, preset: str | None, batch_size: int | None) -> TrainConfig:
    """The batch size and optimizer ``method`` trains with: the preset's (if any), ``batch_size`` over it."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"--preset ({preset!r}) must be one of {', '.join(PRESETS)} (docs/protocol.md)")
    values = preset_layer(preset, method).get("train", {})
    train = build_dataclass(TrainConfig, values, path="train") if values else TrainConfig()
    return train if batch_size is None else dataclasses.replace(train, batch_size=batch_size)
