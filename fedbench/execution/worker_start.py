"""How worker processes of the ``process`` executor start: forked from a forkserver that has
already imported torch and fedbench.

A spawned worker imports torch (1.7–2 s of CPU here) and fedbench before it can load its data;
two of them on a 2-core machine competed with the server's own start and made a 10-round run
10–15 % slower than serial. The forkserver imports them once, in a clean single-threaded
process (no OpenMP pool yet, so forking it is safe, unlike forking the server), and every
worker forks from it with those modules already in memory, shared copy-on-write.

:func:`start_early` starts it at once: ``fedbench run`` calls it before importing torch, so the
forkserver's imports overlap the server's. Without it the first :class:`ProcessPool` starts the
forkserver itself. This module imports neither torch nor fedbench's engine.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

# What a worker needs before its first message: torch and the modules that build a replica.
WORKER_PRELOAD = ["torch", "fedbench.execution.executors", "fedbench.execution.replica", "fedbench.engine"]


def worker_context() -> BaseContext:
    """The multiprocessing context of the process executor's workers: a preloaded forkserver
    where the platform has one (Linux, macOS), else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def start_early() -> None:
    """Start the forkserver now (its imports run beside the caller's); idempotent."""
    context = worker_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()
