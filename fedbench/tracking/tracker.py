"""Experiment tracking: MLflow by default, nothing in tests.

The run config is logged once (flattened params + the YAML artifact), each
finished round's metrics in one batch call, and the metrics table and
partition statistics as artifacts at the end. MLflow's own tracking URI rules
apply (``--tracking-uri`` > ``$MLFLOW_TRACKING_URI`` > local ``sqlite:///mlflow.db``).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from fedbench.config import RunConfig, check_writable, to_yaml
from fedbench.errors import FedbenchError, TrackingError
from fedbench.tracking import provenance
from fedbench.tracking.interrupts import defers_interrupts

log = logging.getLogger(__name__)

# Quiet, fast-failing MLflow unless the user chose otherwise.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# Loggers that print a whole SQLAlchemy traceback for a store error fedbench then reports in one
# line (a read-only or vanished database): ~260 lines per failed call otherwise.
NOISY_LOGGERS = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "sqlalchemy.pool", "alembic")
# The longest store error quoted in a message; longer ones are cut at a word, never inside one.
REASON_CHARS = 600


def quiet_store_logging() -> None:
    """Silence the loggers of :data:`NOISY_LOGGERS` (their errors reach the user as one line)
    unless the process logs at DEBUG level."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)


def one_line(exc: BaseException, limit: int = REASON_CHARS) -> str:
    """An exception's message on one line, whitespace collapsed, cut at a word boundary after
    ``limit`` characters: MLflow's messages end with their own hint (supported schemes, ...),
    which is kept whenever it fits. SQLAlchemy's ``[SQL: ...]`` tail is dropped."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(" [SQL: ", 1)[0]  # SQLAlchemy appends the statement and a link: no help to a user
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " …"


def describe_store(tracking_uri: str | None) -> str:
    """The store a URI (or its absence) means, for messages."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db (the default store)"


class Tracker(Protocol):
    run_id: str | None

    def start(self, config: RunConfig, partition: Mapping[str, Any]) -> None: ...
    def log_round(self, round_idx: int, metrics: Mapping[str, float]) -> None: ...
    def resume(self, run_id: str, rows: list[dict[str, float]]) -> None: ...
    def finish(self, status: str, error: str | None = None) -> None: ...


class NullTracker:
    """Keeps nothing; for tests and library use without MLflow."""

    run_id: str | None = None

    def start(self, config: RunConfig, partition: Mapping[str, Any]) -> None:
        pass

    def log_round(self, round_idx: int, metrics: Mapping[str, float]) -> None:
        pass

    def resume(self, run_id: str, rows: list[dict[str, float]]) -> None:
        pass

    def finish(self, status: str, error: str | None = None) -> None:
        pass


def metrics_csv(rows: list[dict[str, float]]) -> str:
    """One row per round, one column per metric key (blank where a round did not log it)."""
    keys = sorted({k for row in rows for k in row} - {"round"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["round", *keys])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def sqlite_store_path(tracking_uri: str | None) -> Path | None:
    """The database file of a local ``sqlite:///`` store (MLflow's URI rules), else None."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).expanduser().resolve()


@contextlib.contextmanager
def store_lock(tracking_uri: str | None) -> Iterator[None]:
    """Serialize opening a local SQLite store across processes.

    Two runs that open a fresh database at once (a sweep with ``--max-parallel``, two
    terminals) race MLflow's schema migration, and the loser fails with alembic's
    "expected to match one row"; both may also create the same experiment. An
    exclusive lock on ``<db>.lock`` makes the second wait for the first. Servers and
    other stores need no lock.
    """
    path = sqlite_store_path(tracking_uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require_store(tracking_uri: str | None) -> None:
    """For commands that only read runs (``report``, ``run --resume``): a local SQLite store that
    does not exist is an error naming the path, instead of a new empty store made by opening it."""
    path = sqlite_store_path(tracking_uri)
    if path is not None and not path.is_file():
        raise TrackingError(
            f"no tracking store at {path}; check --tracking-uri (or MLFLOW_TRACKING_URI): "
            "'fedbench run' creates the store, reading it never does"
        )


class MlflowTracker:
    """Logs a run to MLflow. The store is checked on :meth:`start`, so an
    unreachable server fails the run before any training."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "fedbench", run_name: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self._client: Any = None
        self._connection: tuple[Any, str | None] | None = None
        self._rows: list[dict[str, float]] = []
        self._partition: Mapping[str, Any] = {}

    def connect(self) -> None:
        """Open the store and look the experiment up now (else :meth:`start` does), so an
        unreachable store fails before any training. The experiment is created by the first run
        that starts in it: a run stopped before its first round (no device fits, say) leaves none."""
        if self._connection is None:
            self._connection = self._connect(create=False)

    def find_experiment(self) -> tuple[Any, str | None]:
        """The store's client and the experiment's id; None while no run has started in it."""
        return self._connect(create=False)

    def _connect(self, create: bool) -> Any:
        from mlflow.tracking import MlflowClient

        quiet_store_logging()
        try:
            with store_lock(self.tracking_uri):
                client = MlflowClient(tracking_uri=self.tracking_uri)
                found = client.get_experiment_by_name(self.experiment)
                experiment_id = found.experiment_id if found else None
                if experiment_id is None and create:
                    experiment_id = client.create_experiment(self.experiment)
        except Exception as exc:  # MLflow raises many types for an unreachable store
            uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "the default store"
            raise TrackingError(
                f"cannot reach the MLflow tracking store at {uri} ({type(exc).__name__}: {one_line(exc)}); "
                "start the server, fix --tracking-uri, or unset MLFLOW_TRACKING_URI to log to ./mlflow.db"
            ) from exc
        return client, experiment_id

    @defers_interrupts
    def start(
        self, config: RunConfig, partition: Mapping[str, Any], option_values: Mapping[str, str] | None = None,
        run_key: str | None = None, method_tags: Mapping[str, str] | None = None,
    ) -> None:
        """Create the run and log its params, config and partition. ``option_values``: the
        method's options with defaults, as :meth:`RunConfig.option_params` gives them,
        ``run_key``: :attr:`RunConfig.run_key` and ``method_tags``: :meth:`RunConfig.method_tags`
        (each computed here if not given; that loads the method, hence torch, which a helper
        process that only logs should not import)."""
        from mlflow.entities import Param

        self.connect()
        assert self._connection is not None
        if self._connection[1] is None:  # the experiment's first run
            self._connection = self._connect(create=True)
        self._client, experiment_id = self._connection
        tags = {
            "fedbench.method": config.method,
            "fedbench.dataset": config.data.dataset,
            "fedbench.model": config.model.name,
            "fedbench.run_key": config.run_key if run_key is None else run_key,
            provenance.TAG: provenance.code_version(),
            provenance.COMMIT_TAG: provenance.commit(),
            **(config.method_tags() if method_tags is None else method_tags),
        }
        self._check_artifact_folder(experiment_id)
        run = self._client.create_run(experiment_id, tags=tags, run_name=self.run_name)
        self.run_id = run.info.run_id
        try:
            if option_values is None:
                option_values = config.option_params()
            flat = config.flat_params() | dict(option_values)  # every option, defaults included
            # what the run did, not "" for an unset switch whose default depends on the device
            flat |= {"cuda_graphs": str(config.uses_cuda_graphs), "channels_last": str(config.uses_channels_last)}
            params = [Param(k, v[:6000]) for k, v in sorted(flat.items())]
            summary = {k: v for k, v in partition.items() if k != "clients"}
            params += [Param(f"partition.{k}", str(v)) for k, v in summary.items()]
            for start in range(0, len(params), 100):
                self._client.log_batch(self.run_id, params=params[start : start + 100])
            self._client.log_text(self.run_id, to_yaml(config), "config.yaml")
            self._partition = partition
            self._client.log_text(self.run_id, json.dumps(partition, indent=1), "partition/stats.json")
        except Exception as exc:  # the run exists now: never leave it RUNNING
            reason = f"{type(exc).__name__}: {one_line(exc)}"
            with contextlib.suppress(Exception):
                self._client.set_tag(self.run_id, "fedbench.error", f"cannot log the run's config: {reason}"[:5000])
                self._client.set_terminated(self.run_id, status="FAILED")
            if isinstance(exc, FedbenchError):
                raise
            raise TrackingError(f"cannot log run {self.run_id} to the MLflow tracking store at "
                                f"{describe_store(self.tracking_uri)} ({reason}); it is marked FAILED") from exc
        log.info("MLflow run %s in experiment '%s'", self.run_id, self.experiment)

    def _check_artifact_folder(self, experiment_id: str) -> None:
        """A local artifact folder that cannot be written fails here, before the run is created
        (a run that cannot log its config would otherwise be left behind)."""
        location = self._client.get_experiment(experiment_id).artifact_location or ""
        parsed = urllib.parse.urlparse(location)
        if parsed.scheme not in ("", "file"):
            return  # a server or object store: checked by writing to it
        folder = Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(location)
        check_writable(folder, f"MLflow artifact folder of experiment '{self.experiment}'",
                       "make it writable, or log to another store or experiment (--tracking-uri, --experiment)")

    @defers_interrupts
    def resume(self, run_id: str, rows: list[dict[str, float]]) -> None:
        """Continue logging into an existing run (``fedbench run --resume``)."""
        self.connect()
        assert self._connection is not None
        self._client = self._connection[0]
        self.run_id = run_id
        self._rows = list(rows)
        self._client.update_run(run_id, status="RUNNING")
        self._client.set_tag(run_id, "fedbench.resumed_after_round", str(len(rows)))
        self._record_code_version(run_id)
        self._set_error_tag(None)  # the interruption it named is over

    def _record_code_version(self, run_id: str) -> None:
        """A run continued by other code than started it records both versions, with a warning:
        its rounds before and after the resume may have computed different things."""
        started = provenance.recorded_version(self._client.get_run(run_id).data.tags)
        now = provenance.code_version()
        version = provenance.resumed_version(started, now)
        if started is not None and version != started:
            log.warning("run %s was started by code %s and continues with %s; its tag %s records both",
                        run_id, provenance.short(started), provenance.short(now), provenance.TAG)
        self._client.set_tag(run_id, provenance.TAG, version)

    def run_config_yaml(self, run_id: str) -> tuple[str, str]:
        """The ``config.yaml`` artifact and the status of an existing run, for resuming it."""
        client, _ = self._connect(create=False)
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise TrackingError(f"no MLflow run {run_id!r} in {self.tracking_uri or 'the default store'}; "
                                "check the id (mlflow ui shows it) and --tracking-uri") from exc
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(run_id, "config.yaml", tmp)
            except Exception as exc:
                raise TrackingError(f"run {run_id} has no config.yaml artifact; it was not made by fedbench run") from exc
            with open(path) as handle:
                return handle.read(), run.info.status

    @defers_interrupts
    def record_failure(self, config: RunConfig, reason: str) -> None:
        """A FAILED run for a config that failed before training (bad data, no device fits), so
        sweeps show it in the tracking store with its one-line reason."""
        self.start(config, {})
        self.finish("FAILED", reason)

    @defers_interrupts
    def record_no_device_fits(self, config: RunConfig, reason: str) -> None:
        """A FINISHED run with ``participation/rate`` 0 and no accuracy, for a config whose method
        no device of the fleet can train: PR 0 is that cell's result, the paper's "NA" (spec
        common.md §1.1), so report tables show it. The one-line reason is the tag
        ``fedbench.no_device_fits``."""
        self.start(config, {})
        self.log_round(0, {"participation/rate": 0.0})
        self._client.set_tag(self.run_id, "fedbench.no_device_fits", reason[:5000])
        self.finish("FINISHED")

    @defers_interrupts
    def log_round(self, round_idx: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), timestamp, round_idx) for k, v in metrics.items()]
        try:
            self._client.log_batch(self.run_id, metrics=batch, synchronous=True)
        except Exception as exc:
            raise TrackingError(
                f"the MLflow tracking store at {describe_store(self.tracking_uri)} failed while logging round "
                f"{round_idx + 1} of run {self.run_id} ({type(exc).__name__}: {one_line(exc)}); "
                "the rounds before it are logged"
            ) from exc
        self._rows.append({"round": round_idx, **metrics})

    @defers_interrupts
    def finish(self, status: str, error: str | None = None) -> None:
        """End the run with ``status``. The ``fedbench.error`` tag is set to ``error``, or removed
        without one, so a resumed run that finishes keeps no stale reason. Each step is tried
        even if one before it failed; a store that refuses them is one :class:`TrackingError`."""
        if self._client is None or self.run_id is None:
            return
        problems: list[Exception] = []
        steps = (
            lambda: self._client.log_text(self.run_id, metrics_csv(self._rows), "metrics.csv"),
            lambda: self._set_error_tag(error),
            lambda: self._client.set_terminated(self.run_id, status=status),
        )
        for step in steps:
            try:
                step()
            except Exception as exc:
                problems.append(exc)
        if not problems:
            return
        last = problems[-1]
        cause = f"{type(last).__name__}: {one_line(last, 300)}"
        if error:  # the run failed first, most likely on this same store: say that, then this
            first = one_line(Exception(error.removeprefix(f"{TrackingError.__name__}: ")), 400)
            raise TrackingError(f"{first}; the store could not mark run {self.run_id} {status} either ({cause})") from last
        raise TrackingError(f"the MLflow tracking store at {describe_store(self.tracking_uri)} failed while ending "
                            f"run {self.run_id} as {status} ({cause})") from last

    def _set_error_tag(self, error: str | None) -> None:
        if error:
            self._client.set_tag(self.run_id, "fedbench.error", error[:5000])
        elif "fedbench.error" in self._client.get_run(self.run_id).data.tags:
            self._client.delete_tag(self.run_id, "fedbench.error")
