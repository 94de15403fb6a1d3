"""``fedbench memory``: the memory model's peak per sub-model a method trains, and the PR under a fleet.

Needs no data: known data sets' input shapes come from a small table (a data set
not in it is loaded once to read its shape). Registered on the main ``app`` by
an import at the end of :mod:`fedbench.cli`.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from fedbench.cli import _D, _M, _R, _T, _default, _fail, _setup_logging, app, out
from fedbench.errors import FedbenchError

# (input shape, classes) of the built-in data sets, so no data has to be read.
KNOWN_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "cinic10": ((3, 32, 32), 10),
    "cinic10-trainval": ((3, 32, 32), 10),
    "femnist": ((1, 28, 28), 62),
    "mini-imagenet": ((3, 84, 84), 100),
    "synthetic": ((3, 16, 16), 10),
}


def dataset_shape(dataset: str, data_dir: str | None) -> tuple[tuple[int, int, int], int]:
    if dataset in KNOWN_SHAPES:
        return KNOWN_SHAPES[dataset]
    from fedbench import engine
    from fedbench.config import DataConfig, RunConfig

    loaded = engine.load_dataset(RunConfig(data=DataConfig(dataset=dataset, data_dir=data_dir), clients_per_round=1))
    return tuple(loaded.input_shape), loaded.num_classes  # type: ignore[return-value]


def memory_rows(
    model_name: str,
    dataset: str,
    batch_size: int,
    method: str,
    fleet_profile: str,
    width: float = 1.0,
    clients: int = 100,
    seed: int = 42,
    low_mb: int = 100,
    high_mb: int = 900,
    data_dir: str | None = None,
) -> list[dict[str, Any]]:
    """One row per workload of ``method`` on ``model_name``: peak, breakdown and PR under the fleet."""
    from fedbench.config import FleetConfig, TrainConfig
    from fedbench.fleet import make_fleet

    TrainConfig(batch_size=batch_size)  # validates the batch size
    fleet_config = FleetConfig(profile=fleet_profile, low_mb=low_mb, high_mb=high_mb)
    shape, num_classes = dataset_shape(dataset, data_dir)
    reports, full_peak_bytes = workload_reports(model_name, shape, num_classes, width, method, batch_size)
    fleet = make_fleet(fleet_config, clients, seed, lambda: full_peak_bytes)
    return [
        {
            "submodel": name,
            "peak_bytes": found.peak_bytes,
            "params_bytes": found.params_bytes,
            "grads_bytes": found.grads_bytes,
            "optimizer_bytes": found.optimizer_bytes,
            "activations_bytes": found.activations_bytes,
            "pr": fleet.participation_rate(found.peak_bytes),
        }
        for name, found in reports
    ]


@functools.lru_cache(maxsize=256)
def workload_reports(
    model_name: str, shape: tuple[int, int, int], num_classes: int, width: float, method: str, batch_size: int
) -> tuple[tuple[tuple[str, Any], ...], int]:
    """``(sub-model name, MemoryReport)`` of each workload of ``method`` (default options) plus the
    full model, at the default SGD, and the full model's cross-entropy peak (the ``relative``
    fleet's reference). Cached for the process: the answer depends on these arguments
    only, and building the method's sub-models costs more than looking the reports up."""
    from fedbench import registry
    from fedbench.config import TrainConfig
    from fedbench.memory import MemoryModel, SGDSpec
    from fedbench.meta_outputs import building_on_meta
    from fedbench.method import Workload, validate_method
    from fedbench.models import build_model
    from fedbench.training import cross_entropy_loss

    method_cls = registry.load("methods", method, validate=validate_method)
    # Shapes are all the memory model reads: on the meta device nothing is initialised or computed.
    with building_on_meta():
        model = build_model(model_name, shape, num_classes, width=width)
        workloads = list(method_cls.workloads(model, method_cls.parse_options({})))
    if all(w.name != "full" for w in workloads):  # the full model as the reference row
        workloads.append(Workload("full", model))
    memory = MemoryModel(SGDSpec.from_train(TrainConfig(batch_size=batch_size)))
    reports = tuple(
        (w.name, memory.report(w.model, w.trainable, batch_size, shape, loss_fn=w.loss_fn or cross_entropy_loss))
        for w in workloads
    )
    return reports, memory.peak_bytes(model, batch_size=batch_size, input_shape=shape)


@app.command("memory")
def memory_command(
    model: Annotated[str, typer.Option(help="Model architecture (see 'fedbench list models')." + _default(_M.name))] = _M.name,
    dataset: Annotated[str, typer.Option(help="Data set, for its input shape and classes." + _default(_D.dataset))] = _D.dataset,
    batch_size: Annotated[int, typer.Option(help="Local batch size (B)." + _default(_T.batch_size))] = _T.batch_size,
    method: Annotated[str, typer.Option(help="Method whose sub-models to report." + _default(_R.method))] = _R.method,
    fleet: Annotated[str, typer.Option(help="Fleet profile for the PR column (see 'fedbench list fleets').")] = "uniform-mb",
    width: Annotated[float, typer.Option(help="Width multiplier of the model, in (0, 1]." + _default(_M.width))] = _M.width,
    clients: Annotated[int, typer.Option(help="Number of devices in the fleet." + _default(_D.num_clients))] = _D.num_clients,
    seed: Annotated[int, typer.Option(help="Seed of the fleet draw." + _default(_R.seed))] = _R.seed,
    low_mb: Annotated[int, typer.Option(help="uniform-mb: smallest budget, MiB." + _default(100))] = 100,
    high_mb: Annotated[int, typer.Option(help="uniform-mb: largest budget, MiB." + _default(900))] = 900,
    data_dir: Annotated[str | None, typer.Option(help="Folder of a data set whose shape is not built in.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {\"rows\": [...]} as JSON.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    """Peak training memory of each sub-model a method trains (no data, no GPU), and its PR under a fleet."""
    _setup_logging(verbose)
    try:
        rows = memory_rows(model, dataset, batch_size, method, fleet, width, clients, seed, low_mb, high_mb, data_dir)
    except FedbenchError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"rows": rows}))
        return
    mib = 1024 * 1024
    table = Table(title=f"{method} on {model} ({dataset}, batch {batch_size}); PR under fleet '{fleet}'")
    table.add_column("sub-model")
    for column in ("peak MiB", "params MiB", "grads MiB", "optimizer MiB", "activations MiB", "PR"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            row["submodel"],
            *(f"{row[k] / mib:.1f}" for k in ("peak_bytes", "params_bytes", "grads_bytes",
                                               "optimizer_bytes", "activations_bytes")),
            f"{100 * row['pr']:.0f} %",
        )
    out.print(table)
