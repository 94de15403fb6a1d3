"""Sweeps: a grid of runs (method × dataset × model × seed …) from one YAML file.

A grid file holds a ``base`` run config, the ``axes`` to vary (dotted config
keys → lists of values), optional ``cases`` (settings that go together, such as a
number of devices and the clients drawn from them: each case is a mapping of dotted keys, and
the grid is every case × every combination of the axes) and an ``experiment``. Each cell is
one run with a stable key (:attr:`RunConfig.run_key`). Cells already
FINISHED in the tracking store are skipped, a cell whose last run was cut short
(RUNNING after a SIGKILL, KILLED, FAILED) and left a checkpoint is resumed from
it, and a failing cell is recorded as FAILED with its one-line reason and never
stops the others. A cell whose method no device of the fleet can train is not a failure but
the paper's "NA": it is recorded as a FINISHED run with ``participation/rate`` 0, which the
report tables show as NA. Cells run here one after the other, in a pool of processes
(``max_parallel``) or as Ray tasks (``executor="ray"``: a local Ray, or the
cluster at ``$RAY_ADDRESS``; log to a shared MLflow server then). On Ray a cell whose
``device`` is ``cuda``/``cuda:N`` also asks for ``gpus_per_cell`` GPUs (default 1; 0.25 packs
four cells on one GPU) and computes on the GPU Ray assigned it, under the cell's own run key.

    experiment: mini-table1
    base: {rounds: 20, data: {dataset: fashion-mnist}}
    axes:
      method: [fedavg, exclusivefl]
      seed: [1, 2, 3]
    cases:                         # optional: each case x every combination of the axes
      - {data.num_clients: 100, clients_per_round: 10}
      - {data.num_clients: 500, clients_per_round: 50}
    gpus_per_cell: 0.5             # optional: GPUs each cuda cell asks Ray for
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fedbench import engine, registry
from fedbench.config import RunConfig, build_dataclass, deep_merge, dotted_to_nested, load_yaml, with_preset
from fedbench.core import checkpoint
from fedbench.errors import ConfigError, FedbenchError, MemoryBudgetError, TrackingError
from fedbench.execution.executors import connect_ray, cpu_demand, require_ray
from fedbench.tracking import provenance
from fedbench.tracking.tracker import MlflowTracker

log = logging.getLogger(__name__)

GRID_KEYS = ("experiment", "base", "axes", "cases", "gpus_per_cell")
# The most cells one grid may hold. Every cell is validated and kept in memory before the first one
# runs, and each is a whole training run: a grid past this is almost always a mistyped axis, and
# a real one this large is better split into several grids (and experiments).
MAX_GRID_CELLS = 10_000
SWEEP_EXECUTORS = ("serial", "process", "ray")
UNFINISHED = ("RUNNING", "KILLED", "FAILED")
# Environment a cell's process needs to see what this one sees (Ray tasks start elsewhere).
FORWARDED_ENV = (
    "FEDBENCH_CHECKPOINTS", "FEDBENCH_DATA", "FEDBENCH_TRACE_CACHE", "MLFLOW_TRACKING_URI", "XDG_CACHE_HOME",
)


@dataclass(frozen=True)
class Cell:
    """One run of a grid: the values it takes on each axis and its resolved config."""

    index: int
    values: Mapping[str, Any]
    config: RunConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


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


@dataclass(frozen=True)
class Grid:
    experiment: str
    cells: list[Cell]
    gpus_per_cell: float | None = None  # GPUs a cuda cell asks Ray for (None: 1)


@dataclass(frozen=True)
class GridFile:
    """A grid file read and checked, its cells not yet built (``--dry-run`` lists them as they are)."""

    experiment: str
    base: dict[str, Any]
    axes: Mapping[str, list[Any]]
    cases: Sequence[Mapping[str, Any]] = ()
    gpus_per_cell: float | None = None

    @property
    def size(self) -> int:
        return max(len(self.cases), 1) * math.prod(len(v) for v in self.axes.values())

    def cells(self) -> Iterator[Cell]:
        return iter_cells(self.base, self.axes, self.cases)


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Grid:
    """Read and expand a grid file; every cell is validated before anything runs."""
    grid = read_grid(path, overrides)
    return Grid(grid.experiment, list(grid.cells()), grid.gpus_per_cell)


def read_grid(path: str | Path, overrides: Mapping[str, Any] | None = None) -> GridFile:
    """A grid file's experiment, base config, axes, cases and ``gpus_per_cell``, checked but not
    expanded, so that ``--dry-run`` can list cells as they are built (:func:`iter_cells`)."""
    raw = load_yaml(path, "grid", "pass an existing grid YAML file (docs/sweeps.md)")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {path}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}")
    base = raw.get("base") or {}
    axes = raw.get("axes") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"grid {path}: 'base' must be a mapping of run-config keys")
    if not isinstance(axes, Mapping) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"grid {path}: 'axes' must map dotted config keys to non-empty lists, e.g. seed: [1, 2]")
    for name, values in axes.items():  # a repeated value would be the same run twice
        repeated = sorted(text for text, count in Counter(map(repr, values)).items() if count > 1)
        if repeated:
            raise ConfigError(f"grid {path}: axis '{name}' repeats {', '.join(repeated)}; list each value once")
    cases = read_cases(path, raw.get("cases"), axes)
    gpus_per_cell = raw.get("gpus_per_cell")
    if gpus_per_cell is not None:
        gpus_per_cell = check_gpus_per_cell(gpus_per_cell, f"grid {path}: gpus_per_cell")
    experiment = raw.get("experiment") or Path(path).stem
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"grid {path}: 'experiment' ({experiment!r}) must be a name, e.g. experiment: mini-table1")
    base = deep_merge(base, dict(overrides or {}))
    base = deep_merge(base, {"tracking": {"experiment": experiment}})
    grid = GridFile(experiment, base, axes, cases, gpus_per_cell)
    if grid.size > MAX_GRID_CELLS:
        lengths = " x ".join(str(n) for n in ([len(cases)] if cases else []) + [len(v) for v in axes.values()])
        raise ConfigError(
            f"grid {path} has {grid.size:,} cells ({lengths}), above {MAX_GRID_CELLS:,}, the most one sweep "
            "validates and holds before running; split it into several grids"
        )
    return grid


def read_cases(path: str | Path, cases: Any, axes: Mapping[str, list[Any]]) -> tuple[dict[str, Any], ...]:
    """A grid's ``cases``: non-empty mappings of dotted keys, none repeated and none setting an axis
    (which would make the axis' value depend on the order of the two)."""
    if cases is None:
        return ()
    example = "e.g. cases: [{data.num_clients: 120, clients_per_round: 12}]"
    if not isinstance(cases, list) or not cases:
        raise ConfigError(f"grid {path}: 'cases' must be a non-empty list of mappings of dotted config keys, {example}")
    settings = []
    for number, case in enumerate(cases, start=1):
        if not isinstance(case, Mapping) or not case:
            raise ConfigError(f"grid {path}: case {number} ({case!r}) must be a non-empty mapping of dotted "
                              f"config keys, {example}")
        settings.append(leaf_settings(case, f"case {number}"))  # keys are names, no setting given twice
        shared = sorted(set(case) & set(axes))
        if shared:
            raise ConfigError(f"grid {path}: case {number} sets {', '.join(map(repr, shared))}, also an axis; "
                              "set each key in the axes or in the cases, not both")
    repeated = sorted(text for text, count in Counter(repr(sorted(c.items())) for c in settings).items() if count > 1)
    if repeated:
        raise ConfigError(f"grid {path}: 'cases' repeats {', '.join(repeated)}; list each case once")
    return tuple(dict(c) for c in cases)


def leaf_settings(values: Mapping[Any, Any], source: str = "", prefix: str = "") -> dict[str, Any]:
    """``values`` (dotted keys, nested mappings, or both) as one dotted key per setting:
    ``{data.alpha: 0.1, data: {num_clients: 12}}`` -> ``{data.alpha: 0.1, data.num_clients: 12}``.
    A setting given twice (``data.alpha`` and ``data: {alpha: ...}``) is a :class:`ConfigError`
    naming ``source``: which one wins would otherwise depend on the order of the keys. A grid's
    cells are all tracked as the grid says, so ``tracking`` is set in its base, never per cell."""
    settings: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source} has the key {key!r}, which is not a config key; keys are dotted names "
                              "such as data.alpha")
        dotted = f"{prefix}{key}"
        if dotted.split(".")[0] == "tracking":
            raise ConfigError(f"{source} sets {dotted!r}; every cell of a grid is tracked alike: set tracking in "
                              "'base' and the experiment with 'experiment:'")
        # A mapping holds settings (an empty one none: ``options: {}``, NeuLite as it is).
        inner = leaf_settings(value, source, f"{dotted}.") if isinstance(value, Mapping) else {dotted: value}
        for name, setting in inner.items():
            clash = _clash(settings, name)
            if clash is not None:
                raise ConfigError(f"{source} gives {clash!r} and {name!r}; give each setting once")
            settings[name] = setting
    return settings


def _clash(settings: Mapping[str, Any], name: str) -> str | None:
    """The setting among ``settings`` that ``name`` would overwrite or lie inside, if any."""
    return next((k for k in settings if k == name or name.startswith(f"{k}.") or k.startswith(f"{name}.")), None)


def cell_overrides(case: Mapping[str, Any], case_number: int | None, axis_values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested overrides of one cell: its case's settings and each axis' value, none of which may
    set what another sets (an axis ``data: [{alpha: 0.1}]`` next to a case's ``data.alpha``)."""
    settings: dict[str, Any] = {}
    owner: dict[str, str] = {}
    sources = ([(f"case {case_number}", case)] if case_number is not None else []) + [
        (f"axis {name!r}", {name: value}) for name, value in axis_values.items()]
    for source, values in sources:
        for name, value in leaf_settings(values, source).items():
            clash = _clash(settings, name)
            if clash is not None:
                raise ConfigError(f"{owner[clash]} sets {clash!r} and {source} sets {name!r}; give each setting once")
            settings[name] = value
            owner[name] = source
    return dotted_to_nested(settings)


def check_method_options(config: RunConfig) -> None:
    """A method option of the wrong type or range is a :class:`ConfigError` now, before any cell
    runs, as ``fedbench run --opt`` says it. A method that cannot be loaded (a typo in ``method``)
    is left to fail as its own cell, with its own line."""
    try:
        method = registry.load("methods", config.method)
    except FedbenchError:
        return
    parse = getattr(method, "parse_options", None)
    if parse is not None:
        parse(config.options)


def iter_cells(
    base: Mapping[str, Any], axes: Mapping[str, list[Any]], cases: Sequence[Mapping[str, Any]] = ()
) -> Iterator[Cell]:
    """Every case (or none) × the cartesian product of ``axes``, applied to ``base`` in file order,
    one cell at a time, each validated as it is built."""
    names = list(axes)
    numbered = list(enumerate(cases, start=1)) or [(None, {})]
    combos = itertools.product(numbered, itertools.product(*(axes[n] for n in names)))
    for index, ((case_number, case), combo) in enumerate(combos):
        axis_values = dict(zip(names, combo, strict=True))
        values = {**case, **axis_values}
        try:
            overrides = cell_overrides(case, case_number, axis_values)
            config = build_dataclass(RunConfig, with_preset(deep_merge(base, overrides)))
            check_method_options(config)
        except ConfigError as exc:
            raise ConfigError(f"grid cell {index} ({', '.join(f'{k}={v}' for k, v in values.items())}): {exc}") from exc
        yield Cell(index, values, config)


# ------------------------------------------------------------------ GPUs on Ray
def check_gpus_per_cell(value: Any, where: str = "--gpus-per-cell") -> float:
    """``value`` as the GPUs one cuda cell asks Ray for, or a one-line error naming ``where``: Ray
    takes a share of one GPU (0 < x <= 1, to 4 decimals) or whole GPUs, nothing in between."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and value > 0 and (value <= 1 or float(value).is_integer()) and round(value, 4) == value):
        raise ConfigError(
            f"{where} ({value!r}) must be a share of one GPU, 0 < x <= 1 with at most 4 decimals (0.25: four "
            "cells per GPU), or a whole number of GPUs (2, 3, ...)"
        )
    return float(value)


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


# ----------------------------------------------------------------- running
def finished_keys(experiment: str, tracking_uri: str | None) -> dict[str, str | None]:
    """Run key -> the code version (:mod:`fedbench.tracking.provenance`) of the newest FINISHED
    run of ``experiment`` with that key (None where the run did not record one)."""

    client, experiment_id = MlflowTracker(tracking_uri, experiment)._connect()
    keys: dict[str, str | None] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1000, page_token=token,
        )
        for run in page:
            key = run.data.tags.get("fedbench.run_key", "")
            if key and key not in keys:
                keys[key] = provenance.recorded_version(run.data.tags)
        token = page.token
        if not token:
            return keys


def skip_reason(version: str | None) -> str:
    """Why a finished cell is skipped, naming the code that finished it where that is not this
    checkout's: the run key hashes the config, not the code, so ``--rerun`` is the way to measure
    a cell again after the code changed."""
    now = provenance.code_version()
    if version == now:
        return "already finished"
    made_by = "code that did not record its version" if version is None else f"code {provenance.short(version)}"
    return f"already finished, by {made_by} (this is {provenance.short(now)}; --rerun runs it here)"


def resumable_runs(experiment: str, tracking_uri: str | None) -> dict[str, str]:
    """Run key -> id of the newest cut-short run (RUNNING, KILLED, FAILED) of ``experiment``
    that left a checkpoint here, so a sweep rerun continues it instead of starting over."""

    client, experiment_id = MlflowTracker(tracking_uri, experiment)._connect()
    found: dict[str, str] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string="attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1000, page_token=token,
        )
        for run in page:
            key = run.data.tags.get("fedbench.run_key", "")
            if run.info.status not in UNFINISHED or not key or key in found:
                continue
            if checkpoint.checkpoint_path(run.info.run_id).is_file():
                found[key] = run.info.run_id
        token = page.token
        if not token:
            return found


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
        context = get_context("spawn")
        stop = context.Event()
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
