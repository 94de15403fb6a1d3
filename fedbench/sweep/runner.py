"""Running a grid's cells: here one after the other, in a pool of processes, or as Ray tasks; a
failing cell is recorded and never stops the others."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from typing import Any

from fedbench import engine
from fedbench.config import RunConfig, build_dataclass
from fedbench.core import checkpoint
from fedbench.errors import ConfigError, FedbenchError, MemoryBudgetError, TrackingError
from fedbench.execution.executors import available_cpus, connect_ray, cpu_demand, require_ray
from fedbench.sweep.grid import Cell, Grid, check_gpus_per_cell
from fedbench.sweep.store import finished_keys, resumable_runs, skip_reason
from fedbench.tracking.tracker import MlflowTracker

log = logging.getLogger(__name__)

SWEEP_EXECUTORS = ("serial", "process", "ray")
# Environment a cell's process needs to see what this one sees (Ray tasks start elsewhere).
FORWARDED_ENV = (
    "FEDBENCH_CHECKPOINTS", "FEDBENCH_DATA", "FEDBENCH_TRACE_CACHE", "MLFLOW_TRACKING_URI", "XDG_CACHE_HOME",
)


# torch's CPU thread pool (OpenMP) keeps an idle thread spinning for a while before it sleeps. Cells
# whose threads together outnumber the CPUs then spend their turns on the cores spinning while
# the thread they wait for cannot run: each cell runs several times slower than alone. Waiting
# passively costs a lone run time, so cell processes are only told to when they oversubscribe.
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}


def oversubscription(cells: Sequence[Cell], max_parallel: int, cpus: int) -> str | None:
    """A warning when the cells that may run at once keep more CPUs busy than ``cpus``; None when they fit."""
    demands = sorted((cpu_demand(c.config) for c in cells), reverse=True)[:max_parallel]
    if len(demands) < 2 or sum(demands) <= cpus:
        return None
    fitting = max(1, cpus // demands[0])
    return (
        f"{len(demands)} cells at once keep {sum(demands)} CPU threads busy on {cpus} CPUs: each runs slower than "
        f"alone (their idle threads wait passively, OMP_WAIT_POLICY=PASSIVE, so that they do not stall each "
        f"other); --max-parallel {fitting} finishes the grid sooner"
    )


@contextlib.contextmanager
def cell_environment(extra: Mapping[str, str]) -> Iterator[None]:
    """``extra`` in this process's environment while cell processes start (they inherit it at
    spawn, before torch reads it), except variables the user set; restored afterwards."""
    added = {key: value for key, value in extra.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@dataclass(frozen=True)
class CellOutcome:
    """What happened to a cell: FINISHED, SKIPPED, NA (no device of the fleet can train the
    method: PR 0, recorded as a finished run) or FAILED (with the reason)."""

    index: int
    status: str
    seconds: float = 0.0
    final_accuracy: float | None = None
    run_id: str | None = None
    reason: str = ""
    resumed_after_round: int | None = None  # the cell continued a cut-short run from this round


def cell_resources(config: RunConfig, gpus_per_cell: float | None = None) -> dict[str, float]:
    """What a cell's Ray task asks for: the CPUs its run keeps busy and, for a ``cuda``/``cuda:N``
    cell, ``gpus_per_cell`` GPUs (default 1); a CPU cell asks for no GPU."""
    gpus = 0.0 if config.device == "cpu" else 1.0 if gpus_per_cell is None else gpus_per_cell
    return {"num_cpus": cpu_demand(config), "num_gpus": gpus}


def check_ray_devices(cells: Sequence[Cell]) -> None:
    """Ray shows a GPU task only the GPU(s) it assigned (``CUDA_VISIBLE_DEVICES``, numbered from 0
    there), so a cell pinned to ``cuda:N`` cannot be honoured: one line naming it, before anything
    runs. ``cuda`` means "the GPU Ray assigned"."""
    pinned = [c for c in cells if c.config.device.startswith("cuda:")]
    if pinned:
        raise ConfigError(
            f"cell {pinned[0].index} asks for device {pinned[0].config.device}, but on Ray each cell computes "
            "on the GPU Ray assigns it; write device: cuda in the grid"
        )


def resolve_executor(executor: str | None, max_parallel: int = 1) -> str:
    """The sweep executor: as given (checked), else ``process`` when ``max_parallel`` > 1, else ``serial``."""
    executor = executor or ("process" if max_parallel > 1 else "serial")
    if executor not in SWEEP_EXECUTORS:
        raise ConfigError(f"sweep executor '{executor}' must be one of {', '.join(SWEEP_EXECUTORS)}")
    return executor


def check_gpu_option(gpus_per_cell: Any, executor: str) -> float | None:
    """``--gpus-per-cell`` checked (None when not given): a valid count, and only for the ray executor."""
    if gpus_per_cell is None:
        return None
    value = check_gpus_per_cell(gpus_per_cell)
    if executor != "ray":
        raise ConfigError(
            f"--gpus-per-cell ({value:g}) places cells on a Ray cluster's GPUs and needs --executor ray; the "
            f"{executor} executor runs each cuda cell on this machine's GPU its config names: drop the option"
        )
    return value


def _checkpoint_round(config: RunConfig, run_id: str) -> int | None:
    """The last finished round of ``run_id``'s checkpoint, or None if it cannot be resumed."""

    try:
        return checkpoint.load(checkpoint.checkpoint_path(run_id), config).round_idx
    except ConfigError as exc:
        log.warning("run %s cannot be resumed (%s); starting the cell over", run_id, exc)
        return None


def run_cell(config: RunConfig, resume_run_id: str | None = None) -> CellOutcome:
    """Run one config with MLflow tracking (continuing ``resume_run_id`` from its checkpoint
    if it has a usable one); a user-caused failure becomes a FAILED outcome."""

    start = time.perf_counter()
    tracker = MlflowTracker(config.tracking.uri, config.tracking.experiment, config.tracking.run_name)
    after = _checkpoint_round(config, resume_run_id) if resume_run_id else None
    resume = resume_run_id if after is not None else None
    try:
        result = engine.run(config, tracker=tracker, resume_run_id=resume)
    except FedbenchError as exc:
        if tracker.run_id is None and isinstance(exc, MemoryBudgetError):  # PR 0: a result, not a failure
            tracker.record_no_device_fits(config, str(exc))
            return CellOutcome(-1, "NA", time.perf_counter() - start, run_id=tracker.run_id, reason=str(exc))
        if tracker.run_id is None and not isinstance(exc, TrackingError):
            tracker.record_failure(config, str(exc))
        return CellOutcome(-1, "FAILED", time.perf_counter() - start, run_id=tracker.run_id, reason=str(exc))
    except Exception as exc:  # a bug in a method must not stop the other cells
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return CellOutcome(-1, "FAILED", time.perf_counter() - start, run_id=tracker.run_id, reason=reason)
    accuracy = result.metric("eval/accuracy")
    return CellOutcome(
        -1, "FINISHED", time.perf_counter() - start, accuracy[-1] if accuracy else None, tracker.run_id,
        resumed_after_round=None if after is None else after + 1,
    )


def _stop_when_set(stop: Any) -> None:
    """A sweep worker's initializer: when the sweep sets ``stop`` (it was interrupted or terminated),
    interrupt this worker's cell as Ctrl-C would, so its engine marks the run KILLED (resumable by
    the next sweep) and the sweep does not wait for the cell to finish."""

    def watch() -> None:
        stop.wait()
        signal.raise_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=watch, name="fedbench-sweep-stop", daemon=True).start()


def _run_cell_in_worker(
    index: int, config_dict: dict[str, Any], resume_run_id: str | None = None, env: Mapping[str, str] | None = None,
) -> CellOutcome:
    os.environ.update(env or {})
    config = build_dataclass(RunConfig, config_dict)
    return replace(run_cell(config, resume_run_id), index=index)


def run_grid(
    grid: Grid,
    *,
    rerun: bool = False,
    max_parallel: int = 1,
    tracking_uri: str | None = None,
    on_outcome: Callable[[Cell, CellOutcome], None] | None = None,
    executor: str | None = None,
    gpus_per_cell: float | None = None,
) -> list[CellOutcome]:
    """Run every cell not yet FINISHED (all, from scratch, with ``rerun``); returns one outcome
    per cell, in order. ``executor``: ``serial`` (here), ``process`` (``max_parallel`` processes;
    the default when it is > 1) or ``ray`` (Ray tasks). ``gpus_per_cell`` (ray only; else the
    grid's, else 1): GPUs each cuda cell asks Ray for."""
    executor = resolve_executor(executor, max_parallel)
    gpus_per_cell = check_gpu_option(gpus_per_cell, executor)
    if gpus_per_cell is None:
        gpus_per_cell = grid.gpus_per_cell
    if executor == "ray":
        check_ray_devices(grid.cells)
        require_ray()
    cells = [replace(c, config=_with_uri(c.config, tracking_uri)) for c in grid.cells]
    uri = tracking_uri or _uri(cells)
    done = {} if rerun else finished_keys(grid.experiment, uri)
    resumable = {} if rerun else resumable_runs(grid.experiment, uri)
    outcomes: dict[int, CellOutcome] = {}
    todo: list[Cell] = []
    first: dict[str, int] = {}  # run key -> the cell that runs it (cells may differ only in a label)
    for cell in cells:
        key = cell.config.run_key
        if key in done:
            outcomes[cell.index] = CellOutcome(cell.index, "SKIPPED", reason=skip_reason(done[key]))
            _notify(on_outcome, cell, outcomes[cell.index])
        elif key in first:
            outcomes[cell.index] = CellOutcome(cell.index, "SKIPPED", reason=f"the same run as cell #{first[key]}")
            _notify(on_outcome, cell, outcomes[cell.index])
        else:
            first[key] = cell.index
            todo.append(cell)
    by_index = {c.index: c for c in todo}

    def finish(outcome: CellOutcome) -> None:
        outcomes[outcome.index] = outcome
        _notify(on_outcome, by_index[outcome.index], outcome)

    if executor == "serial":
        for cell in todo:
            finish(replace(run_cell(cell.config, resumable.get(cell.config.run_key)), index=cell.index))
    elif executor == "process":
        crowded = oversubscription(todo, max_parallel, available_cpus())
        if crowded:
            log.warning("%s", crowded)
        context = get_context("spawn")
        stop = context.Event()
        with cell_environment(PASSIVE_WAIT if crowded else {}):
            pool = ProcessPoolExecutor(max_workers=max_parallel, mp_context=context,
                                       initializer=_stop_when_set, initargs=(stop,))
            try:
                futures = [
                    pool.submit(_run_cell_in_worker, c.index, c.config.to_dict(), resumable.get(c.config.run_key))
                    for c in todo
                ]
                for future in as_completed(futures):
                    finish(future.result())
            except BaseException:  # Ctrl-C, SIGTERM, a bug: the running cells stop now, marked KILLED
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    else:
        for outcome in _run_on_ray(todo, resumable, gpus_per_cell):
            finish(outcome)
    return [outcomes[c.index] for c in cells]


def _run_on_ray(
    cells: list[Cell], resumable: Mapping[str, str], gpus_per_cell: float | None = None
) -> Iterable[CellOutcome]:
    """Each cell as one Ray task asking for the CPUs its run keeps busy and, for a cuda cell, its
    GPUs (:func:`cell_resources`); outcomes as they come. Fails before submitting anything if one
    cell asks for more GPUs than the cluster has."""

    if not cells:
        return
    ray = require_ray()
    resources = {c.index: cell_resources(c.config, gpus_per_cell) for c in cells}
    owns = connect_ray(max(cpu_demand(c.config) for c in cells))
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    try:
        _check_gpus(ray, max(r["num_gpus"] for r in resources.values()))
        task = ray.remote(_run_cell_in_worker)
        pending = {
            task.options(**resources[c.index], max_retries=0).remote(
                c.index, c.config.to_dict(), resumable.get(c.config.run_key), env
            ): c
            for c in cells
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except Exception as exc:  # the task's process died: that cell fails, the others go on
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                yield CellOutcome(cell.index, "FAILED", reason=f"Ray task failed: {reason}")
    finally:
        if owns:
            ray.shutdown()


def _check_gpus(ray: Any, per_cell: float) -> None:
    """A one-line error if the connected cluster has fewer GPUs than one cell asks for (Ray would
    otherwise hold the task forever as infeasible)."""
    if not per_cell:
        return
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < per_cell:
        fix = f", or lower --gpus-per-cell to at most {gpus:g}" if gpus >= 1 else ", or run the cells on device cpu"
        raise ConfigError(
            f"the Ray cluster has {gpus:g} GPUs but each cuda cell asks for {per_cell:g}; add GPU nodes "
            f"(`ray start --address=HEAD_IP:6379` on each GPU machine){fix}"
        )


def summarize(outcomes: Iterable[CellOutcome]) -> dict[str, float]:
    outcomes = list(outcomes)
    return {
        "done": sum(o.status == "FINISHED" for o in outcomes),
        "skipped": sum(o.status == "SKIPPED" for o in outcomes),
        "na": sum(o.status == "NA" for o in outcomes),
        "failed": sum(o.status == "FAILED" for o in outcomes),
        "seconds": sum(o.seconds for o in outcomes),
    }


def _with_uri(config: RunConfig, uri: str | None) -> RunConfig:
    return config if uri is None else replace(config, tracking=replace(config.tracking, uri=uri))


def _uri(cells: list[Cell]) -> str | None:
    return cells[0].config.tracking.uri if cells else None


def _notify(callback: Callable[[Cell, CellOutcome], None] | None, cell: Cell, outcome: CellOutcome) -> None:
    if callback is not None:
        callback(cell, outcome)
