"""Ctrl-C and SIGTERM held back while a finished round is being written.

A KeyboardInterrupt can land on any line. If it lands inside a write to the tracking store (a
SQLite transaction, a reply read from the logging helper), the write is left half done: the
store's lock or the helper's pipe is left in a state in which the run can no longer be marked
KILLED, so it stays RUNNING, and a sweep's other cells can fail on the same lock. Inside
:func:`deferred_interrupts` the first SIGINT or SIGTERM is only noted; it is delivered, to the
handler that was in place, as soon as the block ends. A second one is delivered at once, so a
store that hangs can still be left with two presses of Ctrl-C.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

F = TypeVar("F", bound=Callable[..., Any])

_holding = False  # a block is open: blocks inside it change nothing, so its count of signals is the only one


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold the first SIGINT/SIGTERM until the block ends (a no-op outside the main thread,
    where Python cannot set signal handlers). Nested blocks hold until the outermost ends."""
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in DEFERRED_SIGNALS}
    previous = {sig: handler for sig, handler in previous.items() if handler is not None}  # set outside Python
    held: list[int] = []
    restored = False

    def restore() -> None:
        nonlocal restored
        if not restored:
            restored = True
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def hold(signum: int, _frame: FrameType | None) -> None:
        if held:  # the second one: the user insists
            restore()
            signal.raise_signal(signum)
            return
        held.append(signum)

    for sig in previous:
        signal.signal(sig, hold)
    _holding = True
    try:
        yield
    finally:
        _holding = False
        already_delivered = restored
        restore()
        if held and not already_delivered:
            signal.raise_signal(held[0])  # runs the handler that was in place, here and now


def defers_interrupts(function: F) -> F:
    """Run ``function`` inside :func:`deferred_interrupts`."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with deferred_interrupts():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
