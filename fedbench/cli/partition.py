"""``fedbench partition``: how a partitioner splits a data set across clients, before any training.

Loads the data set and splits it exactly as ``fedbench run`` would (same
loader, partitioner, seed stream and statistics), then prints a summary and a
per-client table, writes JSON with ``--json``, and draws the label mix of
every client as a stacked bar plot with ``--plot``. Registered on the main
``app`` by an import at the end of :mod:`fedbench.cli.main`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from fedbench.cli.common import (
    DATA_DEFAULTS,
    RUN_DEFAULTS,
    app,
    check_data_dir,
    default_note,
    fail,
    out,
    setup_logging,
)
from fedbench.config import DIRICHLET_VARIANTS, dotted_to_nested, make_config
from fedbench.errors import ConfigError, FedbenchError

# Per-class colours and a legend are readable up to this many classes.
MAX_LEGEND_CLASSES = 20
TOP_LABELS_SHOWN = 5


@app.command("partition")
def partition_command(
    dataset: Annotated[str | None, typer.Option(help="Data set name (see 'fedbench list datasets')." + default_note(DATA_DEFAULTS.dataset))] = None,
    partition: Annotated[str | None, typer.Option(help="Partitioner: iid, dirichlet, shards, natural." + default_note(DATA_DEFAULTS.partition))] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration (> 0; smaller = more non-IID)." + default_note(DATA_DEFAULTS.alpha))] = None,
    clients: Annotated[int | None, typer.Option(help="Number of clients." + default_note(DATA_DEFAULTS.num_clients))] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed (the partition uses its own stream of it)." + default_note(RUN_DEFAULTS.seed))] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder holding the data set (else $FEDBENCH_DATA, cache, system folders).")] = None,
    shards_per_client: Annotated[int | None, typer.Option(help="Label shards per client for --partition shards." + default_note(DATA_DEFAULTS.shards_per_client))] = None,
    dirichlet_variant: Annotated[str | None, typer.Option(help=f"Dirichlet rule: {', '.join(DIRICHLET_VARIANTS)}." + default_note(DATA_DEFAULTS.dirichlet_variant))] = None,
    plot: Annotated[str | None, typer.Option(help="Write a stacked bar plot of each client's label mix (PNG, PDF, SVG).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON instead of tables.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log loading details.")] = False,
) -> None:
    """Split a data set into client shards and show sizes, label counts and label entropy per client."""

    setup_logging(verbose)
    overrides = dotted_to_nested(
        {
            "data.dataset": dataset, "data.partition": partition, "data.alpha": alpha,
            "data.num_clients": clients, "data.data_dir": data_dir, "data.shards_per_client": shards_per_client,
            "data.dirichlet_variant": dirichlet_variant, "seed": seed,
        }
    )
    # Selection plays no part in a partition; one client per round keeps any --clients valid.
    overrides.update(clients_per_round=1, tracking={"enabled": False})
    try:
        config = make_config(overrides=overrides)
        check_data_dir(config.data.data_dir)
        from fedbench.core import setup  # lazy: torch loads only when a partition is drawn

        loaded = setup.load_dataset(config)
        _, stats = setup.partition(config, loaded)
        report = {
            "dataset": config.data.dataset, "partition": config.data.partition, "alpha": config.data.alpha,
            "dirichlet_variant": config.data.dirichlet_variant,
            "shards_per_client": config.data.shards_per_client, "seed": config.seed,
            "num_train": loaded.num_train, "num_classes": loaded.num_classes, **stats,
        }
        if plot:
            plot_label_mix(report, Path(plot))
    except FedbenchError as exc:
        raise fail(exc) from None
    if as_json:
        typer.echo(json.dumps(report))
        return
    _print_tables(report)
    if plot:
        out.print(f"label-mix plot written to {plot}")


def _print_tables(report: dict[str, Any]) -> None:
    title = f"{report['dataset']} · {report['partition']} · {report['num_clients']} clients · seed {report['seed']}"
    summary = Table(title=title)
    for column in ("", "min", "median", "mean", "max"):
        summary.add_column(column, justify="right")
    sizes = [c["size"] for c in report["clients"]]
    entropies = [c["label_entropy_bits"] for c in report["clients"]]
    summary.add_row("samples per client", str(report["size_min"]), f"{report['size_median']:g}",
                    f"{np.mean(sizes):.1f}", str(report["size_max"]))
    classes = [c["classes"] for c in report["clients"]]
    summary.add_row("classes per client", str(report["classes_per_client_min"]), f"{np.median(classes):g}",
                    f"{report['classes_per_client_mean']:.2f}", str(report["classes_per_client_max"]))
    summary.add_row("label entropy (bits)", f"{min(entropies):.2f}", f"{np.median(entropies):.2f}",
                    f"{report['label_entropy_bits_mean']:.2f}", f"{max(entropies):.2f}")
    out.print(summary)
    out.print(
        f"{report['num_samples']} of {report['num_train']} training samples assigned; "
        f"size std {report['size_std']:.1f}; {report['num_classes']} classes"
    )
    per_client = Table(title="per client")
    for column in ("client", "samples", "classes", "entropy (bits)", f"top {TOP_LABELS_SHOWN} labels (label:count)"):
        per_client.add_column(column, justify="left" if column.startswith("top") else "right")
    for client in report["clients"]:
        counts = np.asarray(client["label_counts"])
        top = [int(i) for i in np.argsort(-counts, kind="stable")[:TOP_LABELS_SHOWN] if counts[i] > 0]
        per_client.add_row(str(client["client"]), str(client["size"]), str(client["classes"]),
                           f"{client['label_entropy_bits']:.2f}", " ".join(f"{i}:{counts[i]}" for i in top))
    out.print(per_client)


def plot_label_mix(report: dict[str, Any], path: Path) -> None:
    """A stacked bar per client, one colour per class, heights = sample counts.

    Uses a bare :class:`matplotlib.figure.Figure` (Agg canvas), so no pyplot
    state or display backend is touched.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    counts = np.array([c["label_counts"] for c in report["clients"]], dtype=np.int64)
    num_clients, num_classes = counts.shape
    figure = Figure(figsize=(min(max(6.0, 0.12 * num_clients), 40.0), 4.5), layout="constrained")
    axes = figure.add_subplot()
    palette = colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo"]
    positions = np.arange(num_clients)
    bottom = np.zeros(num_clients, dtype=np.int64)
    for label in range(num_classes):
        colour = palette(label if num_classes <= 20 else label / max(num_classes - 1, 1))
        axes.bar(positions, counts[:, label], bottom=bottom, width=0.9, color=colour, label=str(label), linewidth=0)
        bottom += counts[:, label]
    axes.set_xlabel("client")
    axes.set_ylabel("training samples")
    axes.set_xlim(-0.6, num_clients - 0.4)
    alpha = f" α={report['alpha']:g}" if report["partition"] == "dirichlet" else ""
    axes.set_title(f"{report['dataset']}: label mix per client ({report['partition']}{alpha}, seed {report['seed']})")
    if num_classes <= MAX_LEGEND_CLASSES:
        axes.legend(title="label", fontsize="small", ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    try:
        figure.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--plot {path} cannot be written ({exc}); pass a writable .png, .pdf or .svg path") from exc
