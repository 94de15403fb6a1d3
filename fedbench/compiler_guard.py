"""Meta-device traces without importing torch's compiler.

torch wraps several Python functions that eager code calls — the hook of its FLOP counter, the
type-promotion wrapper of every ``torch._refs`` kernel that serves as a meta kernel (``addmm``'s,
for one) — in ``torch._disable_dynamo``. Its wrapper imports ``torch._dynamo`` on the first call
(about 1 s on 2 cores, sympy included) only to wrap the function so that ``torch.compile`` will
not trace into it; with no compilation anywhere in the process the wrapped function is then
called exactly as the bare one. A fedbench trace compiles nothing, and that import was a third of
a machine's first run start-up.

:func:`compiler_left_out` makes such a wrapper call the bare function for the length of a trace:
while torch's compiler is not loaded, ``torch._dynamo`` is a stand-in module whose ``disable``
returns the function unwrapped. Afterwards the stand-in is gone and every function it served
forgets the answer, so the process's first real use of the wrapper (or of ``torch.compile``)
imports the compiler exactly as torch intends. Anything else asked of the stand-in (a thread that
starts compiling mid-trace) swaps the real compiler in on the spot.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

_NAME = "torch._dynamo"


class _StandIn(types.ModuleType):
    """``torch._dynamo`` while a trace runs: ``disable`` hands the function back unwrapped."""

    def __init__(self) -> None:
        super().__init__(_NAME)
        self.served: list[Callable[..., Any]] = []

    def disable(self, fn: Callable[..., Any], recursive: bool = True, wrapping: bool = True) -> Callable[..., Any]:
        self.served.append(fn)
        return fn

    def forget(self) -> None:
        """Drop the unwrapped answers so the next call outside the trace asks the real compiler.

        torch keeps the answer on the function (``__dynamo_disable`` today); any dynamo-named
        attribute holding the function itself is dropped, so a renamed memo is forgotten too."""
        for fn in self.served:
            with contextlib.suppress(TypeError):  # a function without a __dict__ keeps no memo
                for name, value in list(vars(fn).items()):
                    if value is fn and "dynamo" in name:
                        delattr(fn, name)
        self.served.clear()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # introspection (``__path__``, ``__file__``): a module without them
            raise AttributeError(name)
        # Something needs the compiler itself: load it now and stop standing in.
        self.step_aside()
        return getattr(importlib.import_module(_NAME), name)

    def step_aside(self) -> None:
        """Leave ``sys.modules`` and ``torch`` (idempotent) and forget every answer given."""
        if sys.modules.get(_NAME) is self:
            del sys.modules[_NAME]
        if torch.__dict__.get("_dynamo") is self:
            delattr(torch, "_dynamo")
        self.forget()


@contextlib.contextmanager
def compiler_left_out() -> Iterator[None]:
    """Run eager (meta) work without importing ``torch._dynamo``; a no-op once it is imported."""
    if _NAME in sys.modules:  # loaded already (or a stand-in of an enclosing trace): nothing to save
        yield
        return
    stand_in = _StandIn()
    sys.modules[_NAME] = stand_in
    try:
        yield
    finally:
        stand_in.step_aside()  # a no-op if something already swapped the real compiler in
