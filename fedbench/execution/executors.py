"""Executors: where a round's local updates run (``RunConfig.executor``, docs/executors.md).

``serial`` (default)  every ``local_update`` in this process, one after the other.
``process``           ``workers`` worker processes (forked from a preloaded forkserver,
                      :mod:`fedbench.execution.worker_start`), each with ``executor_threads`` torch
                      threads and its own copy of the run (data loaded once per worker).
``ray``               the same workers as Ray actors, on a local Ray or the cluster at
                      ``$RAY_ADDRESS`` (``pip install "fedbench[ray]"``).
``streams``           ``workers`` trainer threads in this process, each with its own copy of the
                      method (the data set shared) and, on a GPU, its own CUDA stream, so that
                      their kernels and graph replays overlap on the one GPU.

Assign, aggregate and evaluation always run in the server process; only local updates move.
The state a worker needs travels as tensors plus the attributes that changed
(:mod:`fedbench.execution.replica`), and a client's work depends only on (seed, round, client), so all
three executors give bit-identical results for the same seed and the same torch thread count
per local update.

A worker that dies (killed, out of memory, ``os._exit``) fails the round with one line
(:class:`ExecutorError`); the engine marks the run FAILED and its last checkpoint stays.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import pickle
import re
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from concurrent import futures as concurrent_futures
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

import torch

from fedbench.config import RunConfig, build_dataclass
from fedbench.core.method import Assignment, ClientContext, Method, Update
from fedbench.errors import ConfigError, ExecutorError, FedbenchError
from fedbench.execution.replica import RoundMessage, ServerSync, WorkerReplica, WorkerResult, split_work
from fedbench.execution.worker_start import worker_context

log = logging.getLogger(__name__)

RAY_INSTALL = 'pip install "fedbench[ray]"'


class Executor(Protocol):
    """Runs a round's local updates; ``start`` once per run, before the first round.

    An executor may also have ``begin(config)``: called by the engine as soon as the config is
    known, before the server loads data, so that workers load their copy of the run meanwhile
    (``start`` then waits for them)."""

    def start(self, method: Method) -> None: ...
    def local_updates(self, method: Method, assignments: Sequence[Assignment], round_idx: int) -> list[Update]: ...
    def close(self) -> None: ...


class RemoteError(RuntimeError):
    """A bug (not a user error) raised by ``local_update`` in a worker, with its traceback there."""


def update_threads(config: RunConfig) -> int:
    """Torch threads of one local update: ``executor_threads``, else ``threads`` for the serial
    executor and ``threads // workers`` (at least 1) for the others."""
    if config.executor_threads is not None:
        return config.executor_threads
    in_process = config.executor in ("serial", "streams")  # torch's thread count is the process's
    return config.threads if in_process else max(1, config.threads // config.workers)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, where the platform tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_demand(config: RunConfig) -> int:
    """CPUs a run keeps busy: the server's threads, or its workers' when they are more."""
    if config.executor in ("serial", "streams"):
        return config.executor_threads or config.threads
    return max(config.threads, config.workers * update_threads(config))


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error with the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray executor needs Ray, which is not installed; {RAY_INSTALL}") from None
    return ray


def check_available(config: RunConfig) -> None:
    """Fail before loading anything if the configured executor cannot run here."""
    if config.executor == "ray":
        require_ray()


def connect_ray(num_cpus: int) -> bool:
    """Connect to ``$RAY_ADDRESS`` or start a local Ray with at least ``num_cpus`` CPUs; True if
    this call started it (the caller shuts it down). An initialised Ray is used as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=max(num_cpus, os.cpu_count() or 1), include_dashboard=False, **quiet)
    except Exception as exc:  # ConnectionError, RuntimeError, ... depending on what failed
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise ExecutorError(f"cannot start or reach {where} ({str(exc).splitlines()[0][:200]}); "
                            "check `ray status` and $RAY_ADDRESS") from exc
    return True


def make_executor(config: RunConfig) -> Executor:
    if config.executor == "process":
        return ProcessExecutor(config.workers, update_threads(config))
    if config.executor == "ray":
        return RayExecutor(config.workers, update_threads(config))
    if config.executor == "streams":
        return StreamExecutor(config.workers)
    return SerialExecutor(config.executor_threads)


# -------------------------------------------------------------------- serial
class SerialExecutor:
    """``local_update`` in this process, in assignment order (with ``threads`` torch threads
    while it runs, if given; else the process's own setting)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def start(self, method: Method) -> None:
        pass

    def local_updates(self, method: Method, assignments: Sequence[Assignment], round_idx: int) -> list[Update]:
        previous = torch.get_num_threads()
        if self.threads is not None and self.threads != previous:
            torch.set_num_threads(self.threads)
        try:
            return [method.local_update(ClientContext.of(method.ctx, a, round_idx)) for a in assignments]
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------- streams
class StreamExecutor:
    """Local updates in ``workers`` threads of this process. Each thread keeps a
    :class:`WorkerReplica` (its own method, worker model and CUDA graphs; the server's data set)
    synced by the same round messages as a worker process, and on a GPU computes on its own CUDA
    stream: one trainer's kernels and graph replays fill the GPU while another's host work runs,
    where worker processes without MPS take turns on it. Nothing is pickled through bytes but
    the method's state: the round's tensors are copied stream to stream, updates come back as
    the tensors they are.

    The trainers share the process's torch threads (``threads``); a client's work depends only on
    (seed, round, client), so a run gives the serial executor's results, bit for bit on the CPU.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.replicas: list[WorkerReplica] = []
        self.streams: list[torch.cuda.Stream | None] = []
        self._sync: ServerSync | None = None
        self._threads = concurrent_futures.ThreadPoolExecutor(workers, thread_name_prefix="fedbench-trainer")
        self._stop = threading.Event()  # set by close(): trainers give up before their next client

    def start(self, method: Method) -> None:
        self._sync = ServerSync(method)
        ctx = method.ctx
        self.replicas = [WorkerReplica(ctx.config, None, data=ctx.data) for _ in range(self.workers)]
        on_gpu = ctx.device.type == "cuda"
        self.streams = [torch.cuda.Stream(ctx.device) if on_gpu else None for _ in range(self.workers)]

    def local_updates(self, method: Method, assignments: Sequence[Assignment], round_idx: int) -> list[Update]:
        if not assignments:
            return []
        assert self._sync is not None, "start() comes first"
        message = self._sync.message(assignments, round_idx)
        shares = split_work(_costs(method, assignments), self.workers)
        for stream in self.streams:  # the server's tensors are ready before a trainer copies them
            if stream is not None:
                stream.wait_stream(torch.cuda.current_stream(stream.device))
        trainings = [self._threads.submit(self._train, index, message, share) for index, share in enumerate(shares)]
        concurrent_futures.wait(trainings)  # every trainer stops before a failure is raised
        return self._sync.updates(assignments, [training.result() for training in trainings])

    def _train(self, index: int, message: RoundMessage, share: list[int]) -> WorkerResult:
        """One trainer's share: the message's mutable parts copied (each replica keeps what it
        is given), its kernels on its stream, finished before the server reads the updates."""
        stream = self.streams[index]
        with contextlib.ExitStack() as on_stream:
            if stream is not None:  # a new thread starts on device 0's default stream
                on_stream.enter_context(torch.cuda.device(stream.device))
                on_stream.enter_context(torch.cuda.stream(stream))
            own = dataclasses.replace(message, context=copy.deepcopy(message.context),
                                      device_state=copy.deepcopy(message.device_state))
            result = self.replicas[index].train(own, share, in_process=True, stop=self._stop)
        if stream is not None:
            stream.synchronize()
        return result

    def close(self) -> None:
        """Stop the trainers (an interrupted round's stop after their current client) and wait."""
        self._stop.set()
        self._threads.shutdown(wait=True, cancel_futures=True)
        self.replicas = []


# ------------------------------------------------------------------- failures
@dataclass
class _Failure:
    """An exception in a worker, made safe to send: user errors travel as themselves."""

    error: FedbenchError | None
    summary: str
    remote_traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        error = exc if isinstance(exc, FedbenchError) else None
        if error is not None:
            try:
                pickle.loads(pickle.dumps(error))
            except Exception:
                error = None
        return cls(error, f"{type(exc).__name__}: {exc}", traceback.format_exc())

    def raise_here(self, where: str) -> None:
        if self.error is not None:
            raise self.error
        raise RemoteError(f"{self.summary} (in {where})\n--- traceback in the worker ---\n{self.remote_traceback}")


def _died(what: str, exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "") + f" while {what}"
    return f"exited with code {exitcode} while {what}"


def unguarded_script_hint(main: Any = None) -> str:
    """Why a worker may have died at start: multiprocessing runs the script that started the
    server again in each new worker, so a script that calls fedbench at its top level (no
    ``if __name__ == "__main__":``) starts processes while the worker is still starting."""
    main = sys.modules.get("__main__") if main is None else main
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:  # interactive, or `python -m`
        return ""
    try:
        source = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    if re.search(r"""__name__\s*==\s*['"]__main__['"]""", source):
        return ""
    return (f"; worker processes run the script {path} again as they start: put the code that runs "
            "fedbench under `if __name__ == \"__main__\":`")


# ------------------------------------------------------------------- process
def _process_worker(conn: Connection, threads: int) -> None:
    """A worker process: set up a replica per run, train shares of rounds, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    torch.set_num_threads(threads)
    replica: WorkerReplica | None = None
    while True:
        try:
            kind, argument = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if kind == "stop":
            return
        try:
            if kind == "setup":
                replica = WorkerReplica(build_dataclass(RunConfig, argument), threads)
                reply: Any = None
            else:
                message = pickle.loads(conn.recv_bytes())
                assert replica is not None, "setup comes before train"
                reply = replica.train(message, argument)
            conn.send_bytes(pickle.dumps(("ok", reply), protocol=pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            conn.send_bytes(pickle.dumps(("error", _Failure.of(exc)), protocol=pickle.HIGHEST_PROTOCOL))


class ProcessPool:
    """``workers`` processes with ``threads`` torch threads each, reusable across runs."""

    def __init__(self, workers: int, threads: int) -> None:
        context = worker_context()
        self.threads = threads
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._busy: set[int] = set()  # workers with a request in flight
        for index in range(workers):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_process_worker, args=(child, threads), name=f"fedbench-worker-{index}", daemon=True
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    @property
    def size(self) -> int:
        return len(self._procs)

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def send(self, index: int, request: tuple[str, Any], blob: bytes | None = None) -> None:
        self._busy.add(index)
        try:
            self._conns[index].send_bytes(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
            if blob is not None:
                self._conns[index].send_bytes(blob)
        except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
            self._raise_dead(index, "receiving its work")

    def receive(self, index: int, what: str) -> Any:
        """The worker's reply; a worker that died first is an :class:`ExecutorError`."""
        conn, proc = self._conns[index], self._procs[index]
        ready = wait([conn, proc.sentinel])
        if conn in ready:
            try:
                status, value = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                self._raise_dead(index, what)
            self._busy.discard(index)
            if status == "error":
                value.raise_here(f"worker process {index}, pid {proc.pid}")
            return value
        self._raise_dead(index, what)

    def _raise_dead(self, index: int, what: str) -> None:
        proc = self._procs[index]
        proc.join(timeout=5)
        raise ExecutorError(f"worker process {index} (pid {proc.pid}) {_died(what, proc.exitcode)}; the round is "
                            f"lost{unguarded_script_hint()}")

    def send_setup(self, config: RunConfig) -> None:
        """Ask every worker to build its replica of the run (data, context, method);
        :meth:`wait_setup` collects the answers."""
        for index in range(self.size):
            self.send(index, ("setup", config.to_dict()))

    def wait_setup(self) -> None:
        for index in range(self.size):
            self.receive(index, "loading the run")

    def close(self) -> None:
        """Stop idle workers; a worker still busy (the round failed or was interrupted) is
        terminated at once rather than waited for."""
        for index, proc in enumerate(self._procs):
            if index in self._busy and proc.is_alive():
                proc.terminate()
            elif proc.is_alive():
                try:
                    self._conns[index].send_bytes(pickle.dumps(("stop", None)))
                except OSError:
                    pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()


class ProcessExecutor:
    """Local updates in a pool of worker processes; every worker sees every round's message, and
    the round's assignments are split so that the workers get similar numbers of samples."""

    def __init__(self, workers: int, threads: int, pool: ProcessPool | None = None) -> None:
        self.pool = pool if pool is not None else ProcessPool(workers, threads)
        self._owns_pool = pool is None
        self._sync: ServerSync | None = None
        self._begun: RunConfig | None = None

    def begin(self, config: RunConfig) -> None:
        """Workers start loading the run now, while the server prepares its own copy."""
        self.pool.send_setup(config)
        self._begun = config

    def start(self, method: Method) -> None:
        self._sync = ServerSync(method)
        config = method.ctx.config
        if self._begun is not None and self._begun != config:  # begun for another run: drain, redo
            self.pool.wait_setup()
            self._begun = None
        if self._begun is None:
            self.begin(config)
        self.pool.wait_setup()
        self._begun = None

    def local_updates(self, method: Method, assignments: Sequence[Assignment], round_idx: int) -> list[Update]:
        if not assignments:
            return []
        assert self._sync is not None, "start() comes first"
        blob = pickle.dumps(self._sync.message(assignments, round_idx), protocol=pickle.HIGHEST_PROTOCOL)
        shares = split_work(_costs(method, assignments), self.pool.size)
        for index, share in enumerate(shares):  # idle workers too: they must follow the state
            self.pool.send(index, ("train", share), blob)
        what = f"training round {round_idx + 1}"
        results: list[WorkerResult] = [self.pool.receive(index, what) for index in range(self.pool.size)]
        return self._sync.updates(assignments, results)

    def close(self) -> None:
        if self._owns_pool:
            self.pool.close()


def _costs(method: Method, assignments: Sequence[Assignment]) -> list[int]:
    """Samples each assignment trains on: the work estimate used to balance the workers."""
    return [int(method.ctx.data.shards[a.client_id].numel()) for a in assignments]


# ------------------------------------------------------------------------ ray
class RayWorker:
    """A Ray actor's body: the same replica as a worker process."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.threads = threads
        self.replica: WorkerReplica | None = None

    def setup(self, config: dict[str, Any]) -> None:
        self.replica = WorkerReplica(build_dataclass(RunConfig, config), self.threads)

    def train(self, message: Any, share: list[int]) -> WorkerResult:
        assert self.replica is not None, "setup comes before train"
        return self.replica.train(message, share)


class RayExecutor:
    """Local updates in ``workers`` Ray actors of ``threads`` CPUs each."""

    def __init__(self, workers: int, threads: int) -> None:
        self.ray = require_ray()
        self._owns_ray = connect_ray(workers * threads)
        cpus = self.ray.cluster_resources().get("CPU", 0)
        if cpus < workers * threads:
            self.close()
            raise ConfigError(
                f"the Ray cluster has {cpus:g} CPUs but {workers} workers x {threads} threads need "
                f"{workers * threads}; lower --workers or --executor-threads, or add nodes"
            )
        actor = self.ray.remote(num_cpus=threads)(RayWorker)
        self.actors = [actor.remote(threads) for _ in range(workers)]
        self._sync: ServerSync | None = None
        self._setup_refs: list[Any] = []
        self._begun: RunConfig | None = None

    def _get(self, refs: list[Any], what: str) -> list[Any]:
        ray = self.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, FedbenchError):
                raise cause from None
            raise RemoteError(f"{str(exc).strip()}\n(in a Ray actor while {what})") from None
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ExecutorError(f"a Ray actor of the executor died while {what} ({reason}); the round is lost") from None

    def begin(self, config: RunConfig) -> None:
        """Actors start loading the run now, while the server prepares its own copy."""
        self._setup_refs = [a.setup.remote(config.to_dict()) for a in self.actors]
        self._begun = config

    def start(self, method: Method) -> None:
        self._sync = ServerSync(method)
        if self._begun is None or self._begun != method.ctx.config:
            self.begin(method.ctx.config)
        self._get(self._setup_refs, "loading the run")
        self._setup_refs, self._begun = [], None

    def local_updates(self, method: Method, assignments: Sequence[Assignment], round_idx: int) -> list[Update]:
        if not assignments:
            return []
        assert self._sync is not None, "start() comes first"
        message = self.ray.put(self._sync.message(assignments, round_idx))
        shares = split_work(_costs(method, assignments), len(self.actors))
        refs = [actor.train.remote(message, share) for actor, share in zip(self.actors, shares, strict=True)]
        return self._sync.updates(assignments, self._get(refs, f"training round {round_idx + 1}"))

    def close(self) -> None:
        for actor in getattr(self, "actors", []):
            try:
                self.ray.kill(actor)
            except Exception:  # already dead
                pass
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False
