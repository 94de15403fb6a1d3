"""``fedbench report``: the paper's tables and figures from tracked runs (and from the models).

``table1``/``table2``/``curves``/``ablation`` read an MLflow experiment, ``info-plane``
one or more runs, ``memory``/``time`` only the memory model and virtual clock.
Tables are printed and written to ``--out``; figures are written as PNG and PDF
and their paths printed. Registered on the main ``app`` by an import at the end
of :mod:`fedbench.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from fedbench import registry
from fedbench.cli.common import (
    DATA_DEFAULTS,
    MODEL_DEFAULTS,
    TRAIN_DEFAULTS,
    app,
    default_note,
    err,
    fail,
    out,
    setup_logging,
)
from fedbench.config import ModelConfig, TrainConfig, make_config
from fedbench.errors import ConfigError, FedbenchError, UnknownNameError

OUT_ROOT = Path("reports") / "out"


class _ReportGroup(TyperGroup):
    """An unknown report kind is one red line and exit code 2, like every other user error."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            raise fail(UnknownNameError("report", args[0], self.list_commands(ctx)))
        return super().resolve_command(ctx, args)


report_app = typer.Typer(
    cls=_ReportGroup,
    help="The paper's tables and figures from tracked runs: table1, table2, curves, memory, time, ablation, info-plane; tta (time to accuracy); runs (every run as numbers, CSV).",
    no_args_is_help=True,
)
app.add_typer(report_app, name="report")

Experiment = Annotated[str, typer.Option(help="MLflow experiment holding the runs." + default_note("fedbench"))]
TrackingUri = Annotated[
    str | None, typer.Option(help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else ./mlflow.db).")
]
OutDir = Annotated[Path | None, typer.Option("--out", help="Output folder (default: reports/out/<experiment>/).")]
Last = Annotated[int, typer.Option(help="Final accuracy = mean of a run's evaluations in its last N × eval_every rounds." + default_note(3))]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")]
Compare = Annotated[str | None, typer.Option(
    "--compare", help="paper: put the paper's published value and the difference (points) beside each cell.")]


def _warn(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)


def _print_paths(paths: list[Path]) -> None:
    for path in paths:
        out.print(str(path), highlight=False, soft_wrap=True)


def _check_out(out_dir: Path | None) -> None:
    """A ``--out`` given on the command line is checked before any work (a store query, a model
    build), so that its one-line error is all a user sees; the default folder is made only when
    a report is written there, so a mistyped experiment leaves no empty folder behind."""
    if out_dir is not None:
        from fedbench.reports.render import check_out_dir  # lazy: pandas loads only when a report is drawn

        check_out_dir(out_dir)


def _save(fig: Any, folder: Path, stem: str) -> list[Path]:
    """:func:`fedbench.reports.figures.save_figure`, a bad ``--out`` being one red line (exit code 2)."""
    from fedbench.reports import figures  # lazy: matplotlib loads only when a report is drawn

    try:
        return figures.save_figure(fig, folder, stem)
    except FedbenchError as exc:
        raise fail(exc) from None


def _table(kind: str, experiment: str, tracking_uri: str | None, fmt: str, out_dir: Path | None,
           metric: str, last: int, iid: bool = False, compare: str | None = None) -> None:
    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.reports import paper, render, tables
    from fedbench.reports.runs import load_experiment

    render.check_format(fmt)  # before reading the store: a typo should not cost a query
    tables.check_metric(metric)
    if compare is not None:
        paper.check_source(compare)
    _check_out(out_dir)
    summary, _history, warnings = load_experiment(experiment, tracking_uri, last_evals=last)
    _warn(warnings)
    table = (tables.table1(summary, metric, iid=iid, last_evals=last) if kind == "table1"
             else tables.table2(summary, metric, last_evals=last))
    if iid:
        kind = f"{kind}-iid"
    if metric != "final":  # each variant its own file, so one never overwrites another
        kind = f"{kind}-{metric}"
    if compare is not None:
        table = paper.compare(table, compare, iid=iid)
        kind = f"{kind}-{compare}"
    _write_table(table, fmt, out_dir, experiment, kind)


def _write_table(table: Any, fmt: str, out_dir: Path | None, experiment: str, stem: str) -> None:
    """Print a table and write it to ``<out>/<stem>.<fmt>`` (default out: the experiment's folder)."""
    from fedbench.reports import render  # lazy: pandas loads only when a report is drawn

    _write_text(render.render(table, fmt), out_dir, experiment, f"{stem}.{fmt}")


def _write_text(text: str, out_dir: Path | None, experiment: str, name: str) -> None:
    """Print ``text`` and write it to ``<out>/<name>`` (default out: the experiment's folder)."""
    from fedbench.reports import render  # lazy: pandas loads only when a report is drawn

    folder = render.check_out_dir(out_dir or OUT_ROOT / render.folder_name(experiment))
    path = render.write_out(folder / name, lambda target: target.write_text(text, encoding="utf-8"))
    typer.echo(text, nl=False)
    err.print(f"wrote {path}", highlight=False, soft_wrap=True)


@report_app.command("table1")
def table1_command(
    experiment: Experiment = "fedbench",
    tracking_uri: TrackingUri = None,
    fmt: Annotated[str, typer.Option("--format", help="md, tex or csv." + default_note("md"))] = "md",
    out_dir: OutDir = None,
    metric: Annotated[str, typer.Option(help="final or best accuracy." + default_note("final"))] = "final",
    last: Last = 3,
    iid: Annotated[bool, typer.Option("--iid", help="Tabulate the IID runs instead of the non-IID ones.")] = False,
    compare: Compare = None,
    verbose: Verbose = False,
) -> None:
    """Table 1: methods × (data set, model) accuracy on non-IID runs, PR per model, inclusive column."""
    setup_logging(verbose)
    try:
        _table("table1", experiment, tracking_uri, fmt, out_dir, metric, last, iid, compare)
    except FedbenchError as exc:
        raise fail(exc) from None


@report_app.command("table2")
def table2_command(
    experiment: Experiment = "fedbench",
    tracking_uri: TrackingUri = None,
    fmt: Annotated[str, typer.Option("--format", help="md, tex or csv." + default_note("md"))] = "md",
    out_dir: OutDir = None,
    metric: Annotated[str, typer.Option(help="final or best accuracy." + default_note("final"))] = "final",
    last: Last = 3,
    compare: Compare = None,
    verbose: Verbose = False,
) -> None:
    """Table 2: methods × (data set, IID / non-IID, model) accuracy, PR per model; NA where PR is 0."""
    setup_logging(verbose)
    try:
        _table("table2", experiment, tracking_uri, fmt, out_dir, metric, last, compare=compare)
    except FedbenchError as exc:
        raise fail(exc) from None


@report_app.command("curves")
def curves_command(
    experiment: Experiment = "fedbench",
    tracking_uri: TrackingUri = None,
    x: Annotated[str, typer.Option("--x", help="round or virtual_time (clock/total_s)." + default_note("round"))] = "round",
    out_dir: OutDir = None,
    verbose: Verbose = False,
) -> None:
    """Fig. 5: eval/accuracy against round or virtual time, one panel per (data set, model, partition)."""
    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.reports import figures, series
    from fedbench.reports.render import folder_name
    from fedbench.reports.runs import load_experiment
    from fedbench.reports.summary import ACCURACY, VIRTUAL_TIME

    setup_logging(verbose)
    try:
        series.check_x_axis(x)
        _check_out(out_dir)
        summary, history, warnings = load_experiment(experiment, tracking_uri, keys=(ACCURACY, VIRTUAL_TIME))
        frame, more = series.curves(summary, history, x)
    except FedbenchError as exc:
        raise fail(exc) from None
    _warn(warnings + more)
    fig = figures.curves_figure(frame, series.X_AXES[x])
    _print_paths(_save(fig, out_dir or OUT_ROOT / folder_name(experiment), f"curves-{x}"))


@report_app.command("tta")
def time_to_accuracy_command(
    target: Annotated[float, typer.Option(help="Test accuracy to reach, a fraction in (0, 1], e.g. 0.75.")],
    experiment: Experiment = "fedbench",
    tracking_uri: TrackingUri = None,
    baseline: Annotated[str, typer.Option(
        help="Row whose time the others' speed-ups divide ('' for none)." + default_note("fedavg"))] = "fedavg",
    fmt: Annotated[str, typer.Option("--format", help="md, tex or csv." + default_note("md"))] = "md",
    out_dir: OutDir = None,
    verbose: Verbose = False,
) -> None:
    """Time to accuracy: simulated time and round at which each method first reaches --target."""
    # lazy: pandas loads only when a report is drawn
    from fedbench.reports import render
    from fedbench.reports.runs import load_experiment
    from fedbench.reports.summary import ACCURACY, VIRTUAL_TIME
    from fedbench.reports.time_to_accuracy import check_target, time_to_accuracy

    setup_logging(verbose)
    try:
        check_target(target)  # before reading the store: a typo should not cost a query
        render.check_format(fmt)
        _check_out(out_dir)
        summary, history, warnings = load_experiment(experiment, tracking_uri, keys=(ACCURACY, VIRTUAL_TIME))
        table, more = time_to_accuracy(summary, history, target, baseline or None)
        _warn(warnings + more)
        _write_table(table, fmt, out_dir, experiment, f"tta-{target!r}")
    except FedbenchError as exc:
        raise fail(exc) from None


@report_app.command("runs")
def runs_command(
    experiment: Experiment = "fedbench",
    tracking_uri: TrackingUri = None,
    out_dir: OutDir = None,
    last: Last = 3,
    verbose: Verbose = False,
) -> None:
    """Every run the tables use, one CSV row each, as numbers: final and best accuracy (fractions), PR, rounds, simulated time, seed, options, code version."""
    # lazy: pandas loads only when a report is drawn
    from fedbench.reports import per_run
    from fedbench.reports.runs import load_experiment

    setup_logging(verbose)
    try:
        _check_out(out_dir)
        summary, _history, warnings = load_experiment(experiment, tracking_uri, last_evals=last)
        _warn(warnings)
        _write_text(per_run.to_csv(per_run.runs_table(summary)), out_dir, experiment, "runs.csv")
    except FedbenchError as exc:
        raise fail(exc) from None


@report_app.command("ablation")
def ablation_command(
    experiment: Experiment = "fedbench",
    tracking_uri: TrackingUri = None,
    baseline: Annotated[str, typer.Option(help="Method drawn next to the NeuLite variants." + default_note("fedavg"))] = "fedavg",
    out_dir: OutDir = None,
    last: Last = 3,
    verbose: Verbose = False,
) -> None:
    """Fig. 8: NeuLite without the curriculum loss / without co-adaptation, vs NeuLite and --baseline."""
    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.reports import figures, series
    from fedbench.reports.render import folder_name
    from fedbench.reports.runs import load_experiment

    setup_logging(verbose)
    try:
        _check_out(out_dir)
        known = {info.name for info in registry.available("methods")}
        if baseline not in known:  # a typo would otherwise only show as a missing bar
            raise UnknownNameError("method", baseline, known)
        summary, _history, warnings = load_experiment(experiment, tracking_uri, last_evals=last)
        bars = series.ablation(summary, baseline=baseline)
    except FedbenchError as exc:
        raise fail(exc) from None
    _warn(warnings)
    if not (summary["method"] == baseline).any():
        others = sorted(set(summary["method"]) - {"neulite"})
        _warn([f"no {baseline} runs for the reference bar" + (f"; pass --baseline with one of {', '.join(others)}"
                                                               if others else "")])
    _warn(series.missing_bars(bars))
    fig = figures.ablation_figure(bars)
    _print_paths(_save(fig, out_dir or OUT_ROOT / folder_name(experiment), "ablation"))


@report_app.command("info-plane")
def info_plane_command(
    run: Annotated[list[str], typer.Option("--run", help="MLflow run id (repeatable: one panel per run).")],
    tracking_uri: TrackingUri = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: reports/out/runs/).")] = None,
    verbose: Verbose = False,
) -> None:
    """Fig. 2: nHSIC(X;Z) vs nHSIC(Y;Z) of each block over training, from nhsic/xz|yz/block<b>."""
    import pandas as pd

    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.reports import figures, series
    from fedbench.reports.runs import RunStore

    setup_logging(verbose)
    try:
        _check_out(out_dir)
        store = RunStore(tracking_uri)
        frames = []
        for run_id in run:
            info = store.run(run_id).iloc[0]
            label = f"{info.get('tags.fedbench.method', '?')} {run_id[:8]}"
            history = store.histories([run_id], series.nhsic_keys(store.metric_keys(run_id)))
            frames.append(series.info_plane(history, label))
    except FedbenchError as exc:
        raise fail(exc) from None
    fig = figures.info_plane_figure(pd.concat(frames, ignore_index=True))
    stem = "info-plane-" + "-".join(r[:8] for r in run)
    _print_paths(_save(fig, out_dir or OUT_ROOT / "runs", stem))


def _model_and_shape(model: str, dataset: str, width: float, data_dir: str | None) -> tuple[Any, tuple, int]:
    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.models import build_model
    from fedbench.reports.memory_table import dataset_shape

    ModelConfig(name=model, width=width)  # validates the width
    shape, num_classes = dataset_shape(dataset, data_dir)
    return build_model(model, shape, num_classes, width=width), shape, num_classes


@report_app.command("memory")
def memory_command(
    model: Annotated[str, typer.Option(help="Model architecture." + default_note(MODEL_DEFAULTS.name))] = MODEL_DEFAULTS.name,
    dataset: Annotated[str, typer.Option(help="Data set, for its input shape and classes." + default_note(DATA_DEFAULTS.dataset))] = DATA_DEFAULTS.dataset,
    batch_size: Annotated[int, typer.Option(help="Local batch size (B)." + default_note(TRAIN_DEFAULTS.batch_size))] = TRAIN_DEFAULTS.batch_size,
    width: Annotated[float, typer.Option(help="Width multiplier, in (0, 1]." + default_note(1.0))] = 1.0,
    data_dir: Annotated[str | None, typer.Option(help="Folder of a data set whose shape is not built in.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: reports/out/models/).")] = None,
    verbose: Verbose = False,
) -> None:
    """Fig. 6: peak training memory of each block (NeuLite stage) vs the full model, from the memory model."""
    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.memory.model import SGDSpec
    from fedbench.reports import costs, figures

    setup_logging(verbose)
    try:
        train = TrainConfig(batch_size=batch_size)
        _check_out(out_dir)
        built, shape, _classes = _model_and_shape(model, dataset, width, data_dir)
        frame, source = costs.block_memory(built, shape, batch_size, SGDSpec.from_train(train))
    except FedbenchError as exc:
        raise fail(exc) from None
    parts = [("params_bytes", "parameters + buffers"), ("grads_bytes", "gradients"),
             ("optimizer_bytes", "momentum"), ("activations_bytes", "activations")]
    title = f"{model} on {dataset}, batch {batch_size} ({source})"
    fig = figures.bars_vs_full(frame, parts, "peak training memory (MiB)", title, scale=figures.MIB)
    paths = _save(fig, out_dir or OUT_ROOT / "models", f"memory-{model}-{dataset}-b{batch_size}")
    full = frame.loc[frame["label"] == "full", "peak_bytes"].iloc[0] / figures.MIB
    largest = frame.loc[frame["label"] != "full", "peak_bytes"].max() / figures.MIB
    saved = costs.reduction(frame, "peak_bytes")
    err.print(f"largest block {largest:.1f} MiB vs full model {full:.1f} MiB "
              f"({100 * abs(saved):.1f} % {'less' if saved >= 0 else 'more'})", highlight=False)
    _print_paths(paths)


@report_app.command("time")
def time_command(
    model: Annotated[str, typer.Option(help="Model architecture." + default_note(MODEL_DEFAULTS.name))] = MODEL_DEFAULTS.name,
    dataset: Annotated[str, typer.Option(help="Data set, for its input shape and classes." + default_note(DATA_DEFAULTS.dataset))] = DATA_DEFAULTS.dataset,
    batch_size: Annotated[int, typer.Option(help="Local batch size (B)." + default_note(TRAIN_DEFAULTS.batch_size))] = TRAIN_DEFAULTS.batch_size,
    samples: Annotated[int, typer.Option(help="Training samples on the device." + default_note(500))] = 500,
    epochs: Annotated[int, typer.Option(help="Local epochs per round." + default_note(TRAIN_DEFAULTS.local_epochs))] = TRAIN_DEFAULTS.local_epochs,
    device_class: Annotated[str, typer.Option(help="Device class of fedbench.simulation.fleet.DEVICE_CLASSES." + default_note("jetson-tx2"))] = "jetson-tx2",
    width: Annotated[float, typer.Option(help="Width multiplier, in (0, 1]." + default_note(1.0))] = 1.0,
    data_dir: Annotated[str | None, typer.Option(help="Folder of a data set whose shape is not built in.")] = None,
    fleet: Annotated[str | None, typer.Option(help="Time synchronous rounds over this fleet profile instead of one device: each round's slowest selected device.")] = None,
    clients: Annotated[int, typer.Option(help="With --fleet: number of devices, each holding --samples samples." + default_note(100))] = 100,
    clients_per_round: Annotated[int, typer.Option(help="With --fleet: devices per round (K)." + default_note(10))] = 10,
    rounds: Annotated[int, typer.Option(help="With --fleet: rounds sampled (spread over the stages)." + default_note(40))] = 40,
    seed: Annotated[int, typer.Option(help="With --fleet: seed of the fleet and the draws." + default_note(42))] = 42,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output folder (default: reports/out/models/).")] = None,
    verbose: Verbose = False,
) -> None:
    """Fig. 7: simulated time of a round per block (NeuLite stage) vs the full model, on one device
    class or, with --fleet, as synchronous rounds over a whole fleet."""
    # lazy: pandas, matplotlib and torch load only when a report is drawn
    from fedbench.reports import costs, figures

    setup_logging(verbose)
    try:
        TrainConfig(batch_size=batch_size, local_epochs=epochs)
        ModelConfig(name=model, width=width)
        if samples < 1:
            raise ConfigError(f"--samples ({samples}) must be >= 1 (training samples on the device; the default is 500)")
        _check_out(out_dir)
        # lazy: pandas, matplotlib and torch load only when a report is drawn
        from fedbench.reports.memory_table import dataset_shape

        shape, num_classes = dataset_shape(dataset, data_dir)
        if fleet is None:
            frame = costs.block_times(model, shape, num_classes, batch_size, samples, epochs, device_class, width)
            where = f"a {device_class}"
        else:
            config = make_config(overrides={
                "data": {"dataset": dataset, "num_clients": clients, "partition": "iid"},
                "model": {"name": model, "width": width}, "fleet": {"profile": fleet},
                "train": {"batch_size": batch_size, "local_epochs": epochs},
                "clients_per_round": clients_per_round, "rounds": rounds, "seed": seed,
                "tracking": {"enabled": False},
            })
            blank = costs.shape_only_dataset(dataset, shape, num_classes, clients * samples)
            frame = costs.fleet_round_times(config, blank, rounds)
            where = f"the '{fleet}' fleet ({clients_per_round} of {clients} devices, slowest one)"
    except FedbenchError as exc:
        raise fail(exc) from None
    parts = [("compute_s", "compute"), ("comm_s", "transfer")]
    title = f"{model} on {dataset}: {samples} samples × {epochs} epochs\non {where}"
    fig = figures.bars_vs_full(frame, parts, "time per round (s, simulated)", title)
    stem = f"time-{model}-{dataset}-" + (device_class if fleet is None else f"fleet-{fleet}")
    paths = _save(fig, out_dir or OUT_ROOT / "models", stem)
    full = frame.loc[frame["label"] == "full", "total_s"].iloc[0]
    blocks = frame[frame["label"] != "full"]
    # full ÷ block: the per-round speed-up over vanilla FL's full model (the paper's "up to 1.9×")
    err.print(f"full model {full:.1f} s per round; blocks "
              + ", ".join(f"{t:.1f}" for t in blocks["total_s"]) + " s (speed-up "
              + ", ".join(f"{full / t:.2f}×" for t in blocks["total_s"]) + ")"
              + ("" if fleet is None else " (devices eligible per block: "
                 + ", ".join(str(n) for n in blocks["eligible"]) + f" of {clients})"),
              highlight=False)
    _print_paths(paths)
