"""fedbench's speed-ups that reach into torch's private APIs or change the interpreter's
behaviour — the one place fedbench does either.

Each one makes meta-device work cheaper (the memory model, FLOP counts, block shapes) without
changing an answer, and each has a fallback on public APIs that gives the same answers:

* :mod:`.meta_kernels` — remembers meta kernels' outputs and replays them (reads an op's
  schema, ``OpOverload._schema``); fallback: run the kernel every time.
* :mod:`.dispatch` — fedbench's dispatch modes opt out of torch's compiler guard around
  ``__torch_dispatch__`` (``TorchDispatchMode._should_skip_dynamo``); fallback: the guard.
* :mod:`.meta_build` — builds modules on the meta device with one function mode instead of two
  (``torch.utils._device``); fallback: ``torch.device("meta")`` plus a public mode.
* :mod:`.collector` — Python's cyclic garbage collector held off during a trace; fallback: the
  collector runs as usual.

**One off switch.** ``FEDBENCH_NO_SPEEDUPS=1`` in the environment runs every fallback: use it
to rule the speed-ups out when an answer looks wrong, or after a torch upgrade. The dispatch
opt-out is decided when fedbench is imported; the others when a trace or a build starts.

**When torch changes.** A hook whose private attribute is gone falls back on its own, and
``tests/test_private_api.py`` fails naming the module, so an upgrade is noticed, not silent.
Nothing outside this package may use a private torch or MLflow API (the same test holds that).
"""

from __future__ import annotations

import os

ENV = "FEDBENCH_NO_SPEEDUPS"
_OFF_VALUES = frozenset({"", "0", "false", "no", "off"})


def enabled() -> bool:
    """False when ``$FEDBENCH_NO_SPEEDUPS`` is set to anything but ``0``/``false``/``no``/``off``."""
    return os.environ.get(ENV, "").strip().lower() in _OFF_VALUES
