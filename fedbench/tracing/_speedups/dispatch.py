"""fedbench's dispatch modes without torch's compiler guard around every op.

torch wraps the ``__torch_dispatch__`` of every :class:`TorchDispatchMode` subclass in
``torch._disable_dynamo`` so that ``torch.compile`` never traces into it. The memory model's
modes compile nothing and run no compiled code, yet the wrapper costs two Python frames and a
frame-evaluation switch on every op a trace dispatches, a large share of a trace's own cost. A
mode that lists :class:`Unguarded` first among its bases opts out.

**Private API.** The opt-out is torch's class hook ``TorchDispatchMode._should_skip_dynamo``,
read when the subclass is defined; with ``FEDBENCH_NO_SPEEDUPS`` set at import, or without the
hook, torch's guard stays.
"""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode

from fedbench.tracing._speedups import enabled

AVAILABLE = callable(getattr(TorchDispatchMode, "_should_skip_dynamo", None))
_UNGUARDED = AVAILABLE and enabled()


class Unguarded:
    """Mixin for a :class:`TorchDispatchMode` subclass: keep its ``__torch_dispatch__`` as written."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:  # torch's name: True means "wrap it"
        return not _UNGUARDED
