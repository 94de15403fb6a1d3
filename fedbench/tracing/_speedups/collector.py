"""Python's cyclic garbage collector held off while a burst of meta-device work runs.

A trace or a sub-model build creates tens of thousands of short-lived Python objects (tensor
wrappers, argument tuples, weak references, autograd nodes), all freed by reference counting as
the step goes. Every 700 allocations still start a collection, and every so often a full one
that walks every object of the process — torch alone leaves a few hundred thousand — and the
traced tensors' autograd graphs. Nothing a trace makes needs the collector to be freed, so it
waits until the trace is done; whatever cyclic garbage a trace leaves is collected by the next
collection after it.

That holds only while nothing in the trace leaves cyclic garbage that keeps a traced tensor
alive — such a tensor would count as live until the end of the step and raise its peak. One
thing does: torch imports its compiler lazily, from inside the first guarded function a process
calls (a meta kernel, an optimizer), and that import leaves cycles through the calling frames.
:func:`trace_paused` therefore loads the compiler (public ``torch.compiler.disable``) before it
pauses the collector, so the import never happens inside a paused trace.

Public API only (:mod:`gc`), but it changes the interpreter's behaviour for the length of the
block, so it is switched off with the other speed-ups (``FEDBENCH_NO_SPEEDUPS``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
from collections.abc import Iterator

import torch

from fedbench.tracing._speedups import enabled


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside; the collector's state is restored afterwards (a
    nested pause, or a caller that had turned it off, leaves it off)."""
    if not enabled():
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _nothing() -> None:
    pass


@functools.cache
def _load_compiler() -> None:
    torch.compiler.disable(_nothing)  # imports torch's compiler; the wrapped function is dropped


def load_compiler_before_fork() -> None:
    """Import torch's compiler now, in a process about to fork workers that will trace, so each
    worker inherits it instead of importing it in its first paused trace."""
    if enabled():
        _load_compiler()


@contextlib.contextmanager
def trace_paused() -> Iterator[None]:
    """:func:`collector_paused` for a trace, with torch's compiler imported before the pause."""
    if enabled():
        _load_compiler()
    with collector_paused():
        yield
