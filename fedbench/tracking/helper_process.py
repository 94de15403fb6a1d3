"""MLflow logging from a helper process, so that MLflow's start-up overlaps the run's own.

Importing MLflow and opening its store take 2–3 s on a small machine (import 1.0–1.2 s,
SQLAlchemy engine, schema check, experiment lookup), all single-threaded Python, while
``fedbench run`` spends the same seconds importing torch and loading data. In one process
the two add up; :class:`ProcessTracker` starts a helper process the moment the config is
known, which imports MLflow and opens the store while the main process prepares the run.
Every call after that is a request and its reply over a pipe, answered in order.
:meth:`ProcessTracker.start` does not wait for the store: round 1 trains while the helper
creates it, and the run id is read when first needed (the first :meth:`ProcessTracker.log_round`
at the latest). A store that cannot be opened fails the run with one line when round 1 is
logged, or before round 1 if the helper's error has already arrived; nothing was logged then, so
nothing is lost. :meth:`ProcessTracker.log_round` returns once the round is in the store, so a
finished round is never only in flight. The helper ignores Ctrl-C and SIGTERM (the main process marks the run
KILLED through it, also when a whole process group is signalled) and exits when the main
process closes the pipe or dies.

    python -m fedbench.tracking.helper_process READ_FD WRITE_FD     # the helper; started by ProcessTracker
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Mapping
from typing import Any, BinaryIO, NamedTuple

from fedbench.config import RunConfig
from fedbench.errors import FedbenchError, TrackingError
from fedbench.tracking.interrupts import defers_interrupts
from fedbench.tracking.tracker import MlflowTracker, one_line


class _Helper(NamedTuple):
    process: subprocess.Popen
    requests: BinaryIO
    replies: BinaryIO


def _spawn_helper() -> _Helper:
    child_reads, parent_writes = os.pipe()
    parent_reads, child_writes = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "fedbench.tracking.helper_process", str(child_reads), str(child_writes)],
        pass_fds=(child_reads, child_writes),
        stdin=subprocess.DEVNULL,
    )
    os.close(child_reads)
    os.close(child_writes)
    return _Helper(process, os.fdopen(parent_writes, "wb"), os.fdopen(parent_reads, "rb"))


def _close_pipes(*streams: BinaryIO) -> None:
    """Close our ends of the helper's pipes; the helper may have closed its ends first."""
    for stream in streams:
        with contextlib.suppress(OSError):
            stream.close()


class ProcessTracker:
    """A :class:`fedbench.tracking.tracker.Tracker` whose MLflow client lives in a helper process."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "fedbench", run_name: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self._run_id: str | None = None
        helper = _spawn_helper()
        self._process = helper.process
        self._requests: BinaryIO | None = helper.requests
        self._replies: BinaryIO | None = helper.replies
        self._pending: list[str] = []  # the requests sent and not yet answered, in order
        self._send("connect", tracking_uri, experiment, run_name)  # the reply is read by the next call

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id: waits for the helper if the run is still being created."""
        if "start" in self._pending:
            self._receive()
        return self._run_id

    # ----------------------------------------------------------- Tracker
    def start(self, config: RunConfig, partition: Mapping[str, Any]) -> None:
        # The options with their defaults and the run key need the method's class: resolved here, where
        # it is loaded already, so that the helper never imports the method (and torch with it).
        self._send("start", config, dict(partition), config.option_params(), config.run_key, config.method_tags())
        self._receive(block=False)  # an error already there fails the run before round 1

    def resume(self, run_id: str, rows: list[dict[str, float]]) -> None:
        self._call("resume", run_id, rows)
        self._run_id = run_id

    def log_round(self, round_idx: int, metrics: Mapping[str, float]) -> None:
        self._call("log_round", round_idx, dict(metrics))

    def finish(self, status: str, error: str | None = None) -> None:
        try:
            if self.run_id is not None:  # waits for a run still being created: it must be marked too
                self._call("finish", status, error)
        finally:
            self.close()

    def close(self) -> None:
        """Let the helper finish what it was sent and exit; idempotent."""
        if self._requests is None:
            return
        _close_pipes(self._requests, self._replies)  # type: ignore[arg-type]
        self._requests = self._replies = None
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    # ------------------------------------------------------------ pipe
    # A request or reply cut in half by Ctrl-C would leave the pipe out of step: each is whole.
    @defers_interrupts
    def _send(self, name: str, *args: Any) -> None:
        if self._requests is None:
            raise TrackingError("the MLflow logging process was already closed; start a new run")
        try:
            pickle.dump((name, args), self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
        except (BrokenPipeError, OSError):
            self._raise_dead()
        self._pending.append(name)

    def _call(self, name: str, *args: Any) -> Any:
        """Send a request and return its reply, after the replies still owed (connect, start)."""
        self._send(name, *args)
        return self._receive()

    @defers_interrupts
    def _receive(self, block: bool = True) -> Any:
        """Read the replies owed, in order (``block=False``: only those already arrived); the last
        one's value. An error reply is raised; the requests behind it are moot."""
        value = None
        while self._pending:
            if not block and not select.select([self._replies], [], [], 0)[0]:
                return None
            try:
                status, value = pickle.load(self._replies)  # type: ignore[arg-type]
            except (EOFError, OSError, pickle.UnpicklingError):
                self._raise_dead()
            name = self._pending.pop(0)
            if status == "error":
                self._pending.clear()
                raise value
            if name == "start":
                self._run_id = value
        return value

    def _raise_dead(self) -> None:
        code = self._process.wait(timeout=10)
        self._requests = self._replies = None
        self._pending.clear()
        raise TrackingError(f"the MLflow logging process exited (code {code}) before the run was logged; "
                            "its error is printed above")


def _as_sendable(exc: Exception) -> Exception:
    """User-facing errors travel as themselves; anything else as a one-line TrackingError."""
    if isinstance(exc, FedbenchError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            pass

    return TrackingError(f"MLflow logging failed: {type(exc).__name__}: {one_line(exc)}")


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The helper's loop: one reply per request, in order, until the pipe closes."""
    import mlflow.tracking  # noqa: F401  (its first job, started before the first request may arrive)


    tracker: MlflowTracker | None = None
    while True:
        try:
            name, args = pickle.load(requests)
        except (EOFError, OSError):
            return
        try:
            if name == "connect":
                tracker = MlflowTracker(*args)
                tracker.connect()
                value = None
            else:
                assert tracker is not None, "connect comes first"
                value = getattr(tracker, name)(*args)
                if name == "start":
                    value = tracker.run_id
            reply: tuple[str, Any] = ("ok", value)
        except Exception as exc:
            reply = ("error", _as_sendable(exc))
        try:
            pickle.dump(reply, replies, protocol=pickle.HIGHEST_PROTOCOL)
            replies.flush()
        except (BrokenPipeError, OSError):
            return


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the main process's to handle:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it still needs the helper to mark the run KILLED
    read_fd, write_fd = (int(a) for a in argv)
    code = 0
    try:
        serve(os.fdopen(read_fd, "rb"), os.fdopen(write_fd, "wb"))
    except BaseException:  # a bug here: show it; the main process reports the helper's exit
        traceback.print_exc()
        code = 1
    finally:
        # Every reply was flushed; what is left is the interpreter's teardown of MLflow and
        # SQLAlchemy (most of a second), which the main process would wait for on its way out,
        # and closing a pipe the main process may have closed first.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
