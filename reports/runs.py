"""Read tracked runs back from MLflow into pandas, the input of every report.

This is the only module of :mod:`fedbench.reports` that talks to MLflow; every
other module turns the frames built here into tables and figures with pure
functions, so they can be tested on hand-made frames.
"""

from __future__ import annotations

import os
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from fedbench.errors import ConfigError, TrackingError, UnknownNameError
from fedbench.reports.summary import CYCLE_END, cycle_end_evaluations, finished_runs, summarize
from fedbench.tracking import provenance
from fedbench.tracking.tracker import (  # also: MLflow's quiet defaults
    describe_store,
    one_line,
    quiet_store_logging,
    require_store,
    sqlite_store_path,
)

# The columns of a history frame: one row per (run, metric, round).
HISTORY_COLUMNS = ("run_id", "key", "round", "value")
# MLflow's error codes for a run id the store does not hold: unknown, or not an id at all.
NO_SUCH_RUN = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


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


def store_fix(tracking_uri: str | None) -> str:
    """How to fix a store that cannot be opened or read, by the kind of store the URI names.

    The causes differ by kind, and so does the fix: a server is down, a local file is not an
    MLflow database (junk, truncated, another program's), or a path without ``sqlite:///`` names
    MLflow's folder store, which MLflow 3 refuses to open (typically ``./mlruns``, or the folder
    or file of the SQLite store the scheme was left off). Telling a user with a local file to
    "start the server" would send them the wrong way."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    flag = "--tracking-uri (or MLFLOW_TRACKING_URI)"
    database = sqlite_store_path(tracking_uri)
    if database is not None:
        return (f"check that {database} is the MLflow database 'fedbench run' wrote and is readable, "
                f"or fix {flag}")
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme == "file" else uri).expanduser()
        if path.is_file():
            return f"a store in a database file needs the scheme: --tracking-uri sqlite:///{path.resolve()}"
        if (path / "mlflow.db").is_file():
            return f"to read the SQLite store in that folder use --tracking-uri sqlite:///{(path / 'mlflow.db').resolve()}"
        return f"give {flag} the sqlite:///PATH.db store 'fedbench run' wrote, not a folder"
    return f"start the server or fix {flag}"


class RunStore:
    """A tracking store opened for reading; every MLflow failure, opening the store included,
    becomes a one-line :class:`TrackingError` naming the store and the fix (:func:`store_fix`),
    an unknown experiment an :class:`UnknownNameError` listing the experiments that exist. A
    local SQLite store must exist: reading never creates one (a mistyped path would otherwise
    become a new, empty store)."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        require_store(tracking_uri)
        quiet_store_logging()
        self.tracking_uri = tracking_uri
        # MLflow opens a SQLite database (and refuses a folder store) in the constructor already,
        # so a junk file or a folder fails here, not at the first query.
        self._client = self._call("open", MlflowClient, tracking_uri=tracking_uri)

    def _error(self, what: str, exc: BaseException) -> TrackingError:
        return TrackingError(
            f"cannot {what} the MLflow tracking store at {describe_store(self.tracking_uri)} "
            f"({type(exc).__name__}: {one_line(exc)}); {store_fix(self.tracking_uri)}"
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow raises many types for an unreachable or broken store
            raise self._error(what, exc) from exc

    def experiment_names(self) -> list[str]:
        found = self._call("list experiments in", self._client.search_experiments)
        return sorted(e.name for e in found)

    def experiment_id(self, experiment: str) -> str:
        found = self._call("read experiments in", self._client.get_experiment_by_name, experiment)
        if found is None:
            raise UnknownNameError("experiment", experiment, self.experiment_names())
        return found.experiment_id

    def runs(self, experiment: str) -> pd.DataFrame:
        """Every run of ``experiment`` (any status) as :func:`runs_frame` builds it."""
        experiment_id = self.experiment_id(experiment)
        runs, token = [], None
        while True:
            page = self._call(
                "search runs in", self._client.search_runs, [experiment_id], max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
        return runs_frame(runs)

    def run(self, run_id: str) -> pd.DataFrame:
        """One run by id (a one-row frame); an unknown id is a :class:`ConfigError`."""
        found = self._find_run(run_id)
        if found is None:
            raise ConfigError(
                f"run '{run_id}' is not in the tracking store at {describe_store(self.tracking_uri)}; "
                "copy the id from 'fedbench run' output or the MLflow UI"
            )
        return runs_frame([found])

    def status(self, run_id: str) -> str | None:
        """The status of a run (``FINISHED``, ``FAILED``, ...), None if the store holds no such run.
        A store that fails is a :class:`TrackingError`, never None: ``checkpoints prune --finished``
        would otherwise take a server that is down for "no run finished" and prune nothing, silently."""
        found = self._find_run(run_id)
        return None if found is None else found.info.status

    def _find_run(self, run_id: str) -> Any | None:
        """The MLflow run, or None where the store has no run with that id."""
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code in NO_SUCH_RUN:
                return None
            raise self._error(f"read run {run_id} in", exc) from exc
        except Exception as exc:  # a broken database raises SQLAlchemy's errors, not MLflow's
            raise self._error(f"read run {run_id} in", exc) from exc

    def histories(self, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
        """Per-round values of ``keys`` of every run, long format (:data:`HISTORY_COLUMNS`), one
        per round (:func:`latest_per_round`); a metric a run did not log simply has no rows."""
        rows = []
        for run_id in run_ids:
            for key in keys:
                history = self._call("read metric history in", self._client.get_metric_history, run_id, key)
                rows.extend((run_id, key, step, value) for step, value in latest_per_round(history))
        return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))

    def metric_keys(self, run_id: str) -> list[str]:
        """The metric keys a run logged."""
        run = self._call(f"read run {run_id} in", self._client.get_run, run_id)
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
    warnings: runs left out or with missing metrics, runs made by several code versions."""

    store = RunStore(tracking_uri)
    runs, skipped = finished_runs(store.runs(experiment), experiment)
    history, off_cycle = cycle_end_evaluations(store.histories(runs["run_id"], (*keys, CYCLE_END)))
    summary, warnings = summarize(runs, history, last_evals)
    versions = provenance.describe_versions(summary["code_version"].tolist(),
                                            f"the {len(summary)} runs of experiment '{experiment}'")
    return summary, history, skipped + off_cycle + warnings + versions
