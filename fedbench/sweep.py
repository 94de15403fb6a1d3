"""Sweeps: a grid of runs (method × dataset × model × seed …) from one YAML file.

A grid file holds a ``base`` run config, the ``axes`` to vary (dotted config
keys → lists of values) and an ``experiment``. Each cell of the cartesian
product is one run with a stable key (:attr:`RunConfig.run_key`). Cells already
FINISHED in the tracking store are skipped, a failing cell is recorded as
FAILED with its one-line reason and never stops the others.

    experiment: mini-table1
    base: {rounds: 20, data: {dataset: fashion-mnist}}
    axes:
      method: [fedavg, exclusivefl]
      seed: [1, 2, 3]
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fedbench.config import RunConfig, build_dataclass, deep_merge, dotted_to_nested, load_yaml
from fedbench.errors import ConfigError, FedbenchError, TrackingError

log = logging.getLogger(__name__)

GRID_KEYS = ("experiment", "base", "axes")


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
    """What happened to a cell: FINISHED, SKIPPED or FAILED (with the reason)."""

    index: int
    status: str
    seconds: float = 0.0
    final_accuracy: float | None = None
    run_id: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Grid:
    experiment: str
    cells: list[Cell]


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Grid:
    """Read and expand a grid file; every cell is validated before anything runs."""
    raw = load_yaml(path)
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {path}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}")
    base = raw.get("base") or {}
    axes = raw.get("axes") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"grid {path}: 'base' must be a mapping of run-config keys")
    if not isinstance(axes, Mapping) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"grid {path}: 'axes' must map dotted config keys to non-empty lists, e.g. seed: [1, 2]")
    experiment = str(raw.get("experiment") or Path(path).stem)
    base = deep_merge(base, dict(overrides or {}))
    base = deep_merge(base, {"tracking": {"experiment": experiment}})
    return Grid(experiment, expand(base, axes))


def expand(base: Mapping[str, Any], axes: Mapping[str, list[Any]]) -> list[Cell]:
    """The cartesian product of ``axes`` applied to ``base``, in file order."""
    names = list(axes)
    cells = []
    for index, combo in enumerate(itertools.product(*(axes[n] for n in names))):
        values = dict(zip(names, combo, strict=True))
        try:
            config = build_dataclass(RunConfig, deep_merge(base, dotted_to_nested(values)))
        except ConfigError as exc:
            raise ConfigError(f"grid cell {index} ({', '.join(f'{k}={v}' for k, v in values.items())}): {exc}") from exc
        cells.append(Cell(index, values, config))
    return cells


# ----------------------------------------------------------------- running
def finished_keys(experiment: str, tracking_uri: str | None) -> set[str]:
    """Run keys that already have a FINISHED run in ``experiment``."""
    from fedbench.tracking import MlflowTracker

    client, experiment_id = MlflowTracker(tracking_uri, experiment)._connect()
    keys: set[str] = set()
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string="attributes.status = 'FINISHED'", max_results=1000, page_token=token
        )
        keys.update(r.data.tags.get("fedbench.run_key", "") for r in page)
        token = page.token
        if not token:
            return keys - {""}


def run_cell(config: RunConfig) -> CellOutcome:
    """Run one config with MLflow tracking; a user-caused failure becomes a FAILED outcome."""
    from fedbench import engine
    from fedbench.tracking import MlflowTracker

    start = time.perf_counter()
    tracker = MlflowTracker(config.tracking.uri, config.tracking.experiment, config.tracking.run_name)
    try:
        result = engine.run(config, tracker=tracker)
    except FedbenchError as exc:
        if tracker.run_id is None and not isinstance(exc, TrackingError):
            tracker.record_failure(config, str(exc))
        return CellOutcome(-1, "FAILED", time.perf_counter() - start, run_id=tracker.run_id, reason=str(exc))
    except Exception as exc:  # a bug in a method must not stop the other cells
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return CellOutcome(-1, "FAILED", time.perf_counter() - start, run_id=tracker.run_id, reason=reason)
    accuracy = result.metric("eval/accuracy")
    return CellOutcome(
        -1, "FINISHED", time.perf_counter() - start, accuracy[-1] if accuracy else None, tracker.run_id
    )


def _run_cell_in_worker(index: int, config_dict: dict[str, Any]) -> CellOutcome:
    config = build_dataclass(RunConfig, config_dict)
    return replace(run_cell(config), index=index)


def run_grid(
    grid: Grid,
    *,
    rerun: bool = False,
    max_parallel: int = 1,
    tracking_uri: str | None = None,
    on_outcome: Callable[[Cell, CellOutcome], None] | None = None,
) -> list[CellOutcome]:
    """Run every cell not yet FINISHED (all with ``rerun``); returns one outcome per cell, in order."""
    cells = [replace(c, config=_with_uri(c.config, tracking_uri)) for c in grid.cells]
    done = set() if rerun else finished_keys(grid.experiment, tracking_uri or _uri(cells))
    outcomes: dict[int, CellOutcome] = {}
    todo: list[Cell] = []
    for cell in cells:
        if cell.config.run_key in done:
            outcomes[cell.index] = CellOutcome(cell.index, "SKIPPED", reason="already finished")
            _notify(on_outcome, cell, outcomes[cell.index])
        else:
            todo.append(cell)
    if max_parallel <= 1:
        for cell in todo:
            outcomes[cell.index] = replace(run_cell(cell.config), index=cell.index)
            _notify(on_outcome, cell, outcomes[cell.index])
    else:
        by_index = {c.index: c for c in todo}
        with ProcessPoolExecutor(max_workers=max_parallel, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_cell_in_worker, c.index, c.config.to_dict()) for c in todo]
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[outcome.index] = outcome
                _notify(on_outcome, by_index[outcome.index], outcome)
    return [outcomes[c.index] for c in cells]


def summarize(outcomes: Iterable[CellOutcome]) -> dict[str, float]:
    outcomes = list(outcomes)
    return {
        "done": sum(o.status == "FINISHED" for o in outcomes),
        "skipped": sum(o.status == "SKIPPED" for o in outcomes),
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
