"""Read tracked runs back from MLflow into pandas, the input of every report.

This is the only module of :mod:`fedbench.reports` that talks to MLflow; every
other module turns the frames built here into tables and figures with pure
functions, so they can be tested on hand-made frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import pandas as pd

from fedbench.errors import ConfigError, TrackingError, UnknownNameError
from fedbench.reports.summary import CYCLE_END, cycle_end_evaluations, finished_runs, summarize
from fedbench.tracking.tracker import (  # also: MLflow's quiet defaults
    one_line,
    quiet_store_logging,
    require_store,
)

# The columns of a history frame: one row per (run, metric, round).
HISTORY_COLUMNS = ("run_id", "key", "round", "value")


def load_runs(experiment: str = "fedbench", tracking_uri: str | None = None) -> Any:
    """One row per run: ``params.*``, ``tags.*`` and the last value of every ``metrics.*``."""
    import mlflow

    require_store(tracking_uri)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return mlflow.search_runs(experiment_names=[experiment])


def load_history(run_id: str, key: str, tracking_uri: str | None = None) -> Any:
    """Per-round values of one metric of one run, as a DataFrame with columns ``round`` and ``value``."""
    from mlflow.tracking import MlflowClient

    history = latest_per_round(MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, key))
    return pd.DataFrame({"round": [step for step, _ in history], "value": [value for _, value in history]})


def latest_per_round(history: Iterable[Any]) -> list[tuple[int, float]]:
    """(round, value) of a metric history, one value per round: the last one logged.

    A resumed run repeats the rounds that finished after its last checkpoint, so MLflow holds
    two values for them; the repeat is the run's own continuation, and counting both would
    weigh those rounds twice in every mean and curve."""
    latest: dict[int, tuple[int, int, float]] = {}
    for order, metric in enumerate(history):
        mark = (int(metric.timestamp or 0), order)
        step = int(metric.step)
        if step not in latest or mark >= latest[step][:2]:
            latest[step] = (*mark, float(metric.value))
    return [(step, latest[step][2]) for step in sorted(latest)]


def _describe(uri: str | None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or "the default store (./mlflow.db)"


class RunStore:
    """A tracking store opened for reading; every MLflow failure becomes a one-line
    :class:`TrackingError`, an unknown experiment an :class:`UnknownNameError` listing
    the experiments that exist. A local SQLite store must exist: reading never creates one
    (a mistyped path would otherwise become a new, empty store)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        require_store(tracking_uri)
        quiet_store_logging()
        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow raises many types for an unreachable or broken store
            raise TrackingError(
                f"cannot {what} in the MLflow tracking store at {_describe(self.tracking_uri)} "
                f"({type(exc).__name__}: {one_line(exc)}); "
                "start the server or fix --tracking-uri"
            ) from exc

    def experiment_names(self) -> list[str]:
        found = self._call("list experiments", self._client.search_experiments)
        return sorted(e.name for e in found)

    def experiment_id(self, experiment: str) -> str:
        found = self._call("read experiments", self._client.get_experiment_by_name, experiment)
        if found is None:
            raise UnknownNameError("experiment", experiment, self.experiment_names())
        return found.experiment_id

    def runs(self, experiment: str) -> pd.DataFrame:
        """Every run of ``experiment`` (any status) as :func:`runs_frame` builds it."""
        experiment_id = self.experiment_id(experiment)
        runs, token = [], None
        while True:
            page = self._call(
                "search runs", self._client.search_runs, [experiment_id], max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs_frame(runs)

    def run(self, run_id: str) -> pd.DataFrame:
        """One run by id (a one-row frame); an unknown id is a :class:`ConfigError`."""
        from mlflow.exceptions import MlflowException

        try:
            found = self._client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                found = self._call("read the run", self._client.get_run, run_id)
            else:
                raise ConfigError(
                    f"run '{run_id}' is not in the tracking store at {_describe(self.tracking_uri)}; "
                    "copy the id from 'fedbench run' output or the MLflow UI"
                ) from exc
        return runs_frame([found])

    def histories(self, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
        """Per-round values of ``keys`` of every run, long format (:data:`HISTORY_COLUMNS`), one
        per round (:func:`latest_per_round`); a metric a run did not log simply has no rows."""
        rows = []
        for run_id in run_ids:
            for key in keys:
                history = self._call("read metric history", self._client.get_metric_history, run_id, key)
                rows.extend((run_id, key, step, value) for step, value in latest_per_round(history))
        return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))

    def metric_keys(self, run_id: str) -> list[str]:
        """The metric keys a run logged."""
        run = self._call("read the run", self._client.get_run, run_id)
        return sorted(run.data.metrics)


def runs_frame(runs: Iterable[Any]) -> pd.DataFrame:
    """MLflow ``Run`` objects -> one row per run, in :func:`mlflow.search_runs`'s layout
    (``run_id``, ``status``, ``start_time``, ``params.*``, ``tags.*``, ``metrics.*``)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "run_name": run.info.run_name,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "status", "start_time", "run_name"])


def load_experiment(
    experiment: str, tracking_uri: str | None = None, keys: Iterable[str] = ("eval/accuracy",), last_evals: int = 3
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The finished runs of ``experiment`` summarised (one row per run), the per-round history
    of ``keys`` (without evaluations that end no cycle: :func:`cycle_end_evaluations`), and
    warnings naming runs with missing metrics."""

    store = RunStore(tracking_uri)
    runs, skipped = finished_runs(store.runs(experiment), experiment)
    history, off_cycle = cycle_end_evaluations(store.histories(runs["run_id"], (*keys, CYCLE_END)))
    summary, warnings = summarize(runs, history, last_evals)
    return summary, history, skipped + off_cycle + warnings
