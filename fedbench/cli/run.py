"""``fedbench run``: train one method on one data set and log the run to MLflow (or resume one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

# Set by each command's --verbose (through setup_logging): show tracebacks of unexpected errors.
from fedbench.cli.common import (
    DATA_DEFAULTS,
    MODEL_DEFAULTS,
    RUN_DEFAULTS,
    TRAIN_DEFAULTS,
    app,
    check_data_dir,
    default_note,
    describe_training,
    err,
    fail,
    interrupted_line,
    out,
    setup_logging,
    sigterm_raises,
)
from fedbench.config import (
    EXECUTION_FIELDS,
    FleetConfig,
    RunConfig,
    check_writable,
    dotted_to_nested,
    make_config,
    parse_option_pairs,
)
from fedbench.errors import ConfigError, FedbenchError
from fedbench.execution.worker_start import start_early

log = logging.getLogger(__name__)


@app.command()
def run(
    method: Annotated[str | None, typer.Option(help="Method name (see 'fedbench list methods')." + default_note(RUN_DEFAULTS.method))] = None,
    dataset: Annotated[str | None, typer.Option(help="Data set name." + default_note(DATA_DEFAULTS.dataset))] = None,
    model: Annotated[str | None, typer.Option(help="Model architecture." + default_note(MODEL_DEFAULTS.name))] = None,
    width: Annotated[float | None, typer.Option(help="Width multiplier of the model, in (0, 1]." + default_note(MODEL_DEFAULTS.width))] = None,
    partition: Annotated[str | None, typer.Option(help="Partitioner: iid, dirichlet, ..." + default_note(DATA_DEFAULTS.partition))] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration (> 0; smaller = more non-IID)." + default_note(DATA_DEFAULTS.alpha))] = None,
    clients: Annotated[int | None, typer.Option(help="Number of clients (devices)." + default_note(DATA_DEFAULTS.num_clients))] = None,
    clients_per_round: Annotated[int | None, typer.Option(help="Clients selected each round (K)." + default_note(RUN_DEFAULTS.clients_per_round))] = None,
    rounds: Annotated[int | None, typer.Option(help="Communication rounds." + default_note(RUN_DEFAULTS.rounds))] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round (E)." + default_note(TRAIN_DEFAULTS.local_epochs))] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size (B)." + default_note(TRAIN_DEFAULTS.batch_size))] = None,
    optimizer: Annotated[str | None, typer.Option(help="Local optimizer: sgd or adam (docs/protocol.md)." + default_note(TRAIN_DEFAULTS.optimizer))] = None,
    lr: Annotated[float | None, typer.Option(help="Local learning rate." + default_note(TRAIN_DEFAULTS.lr))] = None,
    momentum: Annotated[float | None, typer.Option(help="Local SGD momentum." + default_note(TRAIN_DEFAULTS.momentum))] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Local SGD weight decay." + default_note(TRAIN_DEFAULTS.weight_decay))] = None,
    lr_schedule: Annotated[str | None, typer.Option(help="How the lr changes over the rounds: constant, exponential, multistep or cosine (docs/protocol.md)." + default_note(TRAIN_DEFAULTS.lr_schedule))] = None,
    lr_decay: Annotated[float | None, typer.Option(help="exponential: the lr's factor per round; multistep: its factor at each milestone." + default_note(TRAIN_DEFAULTS.lr_decay))] = None,
    lr_milestone: Annotated[list[float] | None, typer.Option(help="multistep: a milestone, as a fraction of the rounds (repeatable), e.g. --lr-milestone 0.5 --lr-milestone 0.75.")] = None,
    lr_min: Annotated[float | None, typer.Option(help="The floor of every lr schedule." + default_note(TRAIN_DEFAULTS.lr_min))] = None,
    preset: Annotated[str | None, typer.Option(help="Training values as a whole: paper (the paper's common setting) or official (the method's own code's); flags given here override it (docs/protocol.md).")] = None,
    weighting: Annotated[str | None, typer.Option(help="Server averaging: uniform or samples." + default_note(RUN_DEFAULTS.weighting))] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N rounds (and after the last)." + default_note(RUN_DEFAULTS.eval_every))] = None,
    info_plane: Annotated[int | None, typer.Option(help="Log nHSIC of every block output on N test images per class at evaluation rounds (Fig. 2; 0: off)." + default_note(RUN_DEFAULTS.info_plane))] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random draw." + default_note(RUN_DEFAULTS.seed))] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads." + default_note(RUN_DEFAULTS.threads))] = None,
    device: Annotated[str | None, typer.Option(help="Where training and evaluation compute: cpu, cuda or cuda:N (docs/gpu.md)." + default_note(RUN_DEFAULTS.device))] = None,
    resident: Annotated[bool | None, typer.Option("--resident/--no-resident", hidden=True, help="With a GPU: keep data and models on it for the run (--no-resident: move each client's model there and back, the path kept to compare against; docs/gpu.md).")] = None,
    cuda_graphs: Annotated[bool | None, typer.Option("--cuda-graphs/--no-cuda-graphs", help="With a GPU: replay each client's local steps from a captured CUDA graph (docs/gpu.md)." + default_note("on for a resident GPU run"))] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="Keep convolutions in the channels-last layout that GPU tensor cores compute in (docs/gpu.md)." + default_note("on with a GPU"))] = None,
    executor: Annotated[str | None, typer.Option(help="Where local updates run: serial, process, ray or streams (trainer threads; on a GPU, one CUDA stream each; docs/executors.md)." + default_note(RUN_DEFAULTS.executor))] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes, Ray actors or trainer threads of the process/ray/streams executor." + default_note(RUN_DEFAULTS.workers))] = None,
    executor_threads: Annotated[int | None, typer.Option(help="torch threads per local update (default: threads // workers; serial: threads).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder holding the data set (else $FEDBENCH_DATA, cache, system folders).")] = None,
    fleet: Annotated[str | None, typer.Option(help="Device fleet profile (see 'fedbench list fleets')." + default_note(FleetConfig().profile))] = None,
    low_mb: Annotated[int | None, typer.Option(help="uniform-mb fleet: smallest memory budget, MiB." + default_note(FleetConfig().low_mb))] = None,
    high_mb: Annotated[int | None, typer.Option(help="uniform-mb fleet: largest memory budget, MiB." + default_note(FleetConfig().high_mb))] = None,
    opt: Annotated[list[str] | None, typer.Option(help="Method option key=value (repeatable), e.g. --opt mu=0.01.")] = None,
    config: Annotated[str | None, typer.Option(help="YAML run config; flags given here override it.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (else $MLFLOW_TRACKING_URI, else ./mlflow.db).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment name." + default_note("fedbench"))] = None,
    run_name: Annotated[str | None, typer.Option(help="MLflow run name.")] = None,
    no_tracking: Annotated[bool, typer.Option("--no-tracking", help="Do not log to MLflow.")] = False,
    keep_checkpoint: Annotated[bool | None, typer.Option("--keep-checkpoint", help="Keep the run's checkpoint after it finishes (default: removed once the run is recorded FINISHED).")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the MLflow run RUN_ID from its last checkpoint (its own config; other flags but --tracking-uri, --data-dir, --threads and the executor ones are ignored, with a warning).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    """Train one method on one data set and log the run to MLflow."""
    # lazy: MLflow and torch load after the command line is parsed
    from fedbench.tracking.helper_process import ProcessTracker
    from fedbench.tracking.tracker import NullTracker

    setup_logging(verbose)
    given = {
            "method": method, "data.dataset": dataset, "data.partition": partition, "data.alpha": alpha,
            "data.num_clients": clients, "data.data_dir": data_dir, "model.name": model, "model.width": width,
            "train.local_epochs": local_epochs, "train.batch_size": batch_size, "train.lr": lr,
            "train.momentum": momentum, "train.weight_decay": weight_decay, "weighting": weighting,
            "train.optimizer": optimizer, "train.lr_schedule": lr_schedule, "train.lr_decay": lr_decay, "train.lr_min": lr_min,
            "train.lr_milestones": lr_milestone or None, "preset": preset,
            "clients_per_round": clients_per_round, "rounds": rounds, "eval_every": eval_every,
            "info_plane": info_plane,
            "seed": seed, "threads": threads, "device": device, "resident": resident, "cuda_graphs": cuda_graphs,
            "channels_last": channels_last,
            "tracking.uri": tracking_uri,
            "executor": executor, "workers": workers, "executor_threads": executor_threads,
            "tracking.experiment": experiment, "tracking.run_name": run_name, "tracking.keep_checkpoint": keep_checkpoint,
            "fleet.profile": fleet, "fleet.low_mb": low_mb, "fleet.high_mb": high_mb,
    }
    overrides = dotted_to_nested(given)
    tracker: Any = None
    try:
        with sigterm_raises():
            if opt:
                overrides["options"] = parse_option_pairs(opt)
            if resume is not None:
                if not resume.strip():
                    raise ConfigError("--resume needs a run id, got an empty one; copy it from the output of "
                                      "'fedbench run' or from mlflow ui")
                if no_tracking:
                    raise ConfigError("--resume continues a run logged in MLflow, into the same run; drop "
                                      "--no-tracking")
                allowed = {k: v for k, v in given.items() if v is not None and k in RESUME_OVERRIDES}
                cfg, tracker = _resumable_run(resume, tracking_uri, dotted_to_nested(allowed))
                ignored = [f"--{k.split('.')[-1].replace('_', '-')}" for k, v in given.items()
                           if v is not None and k not in RESUME_OVERRIDES]
                ignored += [flag for flag, value in (("--opt", opt), ("--config", config)) if value]
                if ignored:
                    log.warning("--resume continues run %s with its own config; ignored: %s", resume, ", ".join(ignored))
                check_data_dir(cfg.data.data_dir)
            else:
                cfg = make_config(config, overrides)
                check_data_dir(cfg.data.data_dir)
                if cfg.preset is not None:  # what the preset (and any flag over it) set
                    err.print(f"{cfg.method}, {cfg.preset} preset: {describe_training(cfg.train)}", highlight=False,
                              soft_wrap=True)
                # Started before torch is imported, so MLflow's start-up overlaps the run's (tracking_process.py).
                tracker = (
                    NullTracker()
                    if no_tracking or not cfg.tracking.enabled
                    else ProcessTracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.run_name)
                )
            if not isinstance(tracker, NullTracker) and cfg.tracking.checkpoint_every:
                # lazy: MLflow and torch load after the command line is parsed
                from fedbench.core.checkpoint import checkpoint_dir

                check_writable(checkpoint_dir(), "checkpoint folder",
                               "set FEDBENCH_CHECKPOINTS to a writable folder (or tracking.checkpoint_every: 0)")
            if cfg.executor == "process":  # workers' imports overlap the server's (worker_start.py)
                start_early()

            with _RoundProgress(cfg) as progress:
                from fedbench import engine  # lazy: torch loads after the command line is parsed

                result = engine.run(cfg, tracker=tracker, on_round=progress.update,
                                    resume_run_id=resume or None)
    except FedbenchError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt as exc:
        raise typer.Exit(code=interrupted_line(exc, getattr(tracker, "run_id", None), resume)) from None
    finally:
        close = getattr(tracker, "close", None)
        if close is not None:
            close()  # a run that failed before it started leaves no logging helper behind
    accuracy = result.metric("eval/accuracy")
    # The last evaluation, not the report's "final" (the mean of the last evaluations; docs/reports.md).
    summary = f"{cfg.method} on {cfg.data.dataset}: last evaluation {accuracy[-1]:.4f}, best {max(accuracy):.4f}"
    run_id = getattr(tracker, "run_id", None)
    out.print(summary + (f" (MLflow run {run_id}, experiment '{cfg.tracking.experiment}')" if run_id else ""))


# What `--resume` may change: where the data and the logs live and how the arithmetic runs, none of
# which is part of the run key (a moved data folder, a machine with more cores or a GPU).
RESUME_OVERRIDES = frozenset({"data.data_dir", "tracking.uri", "threads", *EXECUTION_FIELDS})


def _resumable_run(run_id: str, tracking_uri: str | None, overrides: dict[str, Any]) -> tuple[RunConfig, Any]:
    """The config of an unfinished MLflow run, with ``overrides`` (of :data:`RESUME_OVERRIDES`,
    the store's URI among them) applied as to any config file, and a tracker attached to its store."""
    import tempfile

    # lazy: MLflow and torch load after the command line is parsed
    from fedbench.tracking.tracker import MlflowTracker, require_store

    require_store(tracking_uri)  # a mistyped store path is named, not created empty
    tracker = MlflowTracker(tracking_uri)
    text, status = tracker.run_config_yaml(run_id)
    if status == "FINISHED":
        raise ConfigError(f"run {run_id} already FINISHED; nothing to resume (start a new run instead)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        cfg = make_config(path, overrides or None)  # it gives every value: its preset changes none
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
            # No loss: no selected client held two samples, so none trained a step (not a divergence).
            shown = f"{loss:.4f}" if loss is not None else "- (no client trained a step)"
            err.print(
                f"round {result.round_idx + 1}/{self.config.rounds}  accuracy {acc:.4f}  "
                f"train loss {shown}  {result.metrics['time/round_s']:.1f}s",
                highlight=False,
            )

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
