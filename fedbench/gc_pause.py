"""Python's cyclic garbage collector held off while a burst of meta-device work runs.

A memory trace creates tens of thousands of short-lived Python objects (tensor wrappers, argument
tuples, weak references, autograd nodes), all freed by reference counting as the step goes. Each
700 allocations still start a collection, and every so often a full one that walks every object
of the process — torch alone leaves ~185,000 — and the traced tensors' autograd graphs: ~120 ms
each. Measured over a `fedbench memory` table of every model and method in one process
(`gc.callbacks` timing each collection): 1.0 s of 5.9 s in the collector, 0.8 s of it in 7 full
collections. Nothing a trace makes needs the collector to be freed, so it waits until the trace
is done; whatever cyclic garbage a trace leaves is collected by the next collection after it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; the collector's state is restored afterwards (a
    nested pause, or a caller that had turned it off, leaves it off)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def import_frozen(module: str) -> None:
    """Import ``module`` with the collector paused, then freeze every object the process holds
    (``gc.freeze``): a large library's modules live as long as the process, and each full
    collection would otherwise walk them again. For processes that own their lifetime (the
    ``fedbench`` command, its MLflow helper), not for a library call."""
    with collector_paused():
        importlib.import_module(module)
    gc.freeze()
