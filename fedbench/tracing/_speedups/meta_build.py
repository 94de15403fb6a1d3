"""Modules built on the meta device in one torch function mode.

``torch.device("meta")`` as a context is itself a function mode that gives every factory call
the meta device; skipping weight initialisation (nothing can read it on meta) needs a second
mode, and every torch call made while building passes through both. :class:`BuildOnMeta` does
both jobs in one mode, so building a sub-model costs less; sub-model builds are a large part of
a memory table.

**Private API.** It extends torch's own device mode, ``torch.utils._device.DeviceContext``, and
reads its list of factory functions, ``_device_constructors``. Without them (:data:`AVAILABLE`
false), or under ``FEDBENCH_NO_SPEEDUPS``, :func:`fedbench.tracing.meta.building_on_meta` uses
``torch.device("meta")`` plus a public mode, with the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from torch.utils._device import DeviceContext, _device_constructors

    AVAILABLE = callable(_device_constructors) and isinstance(_device_constructors(), (set, frozenset, dict))
except ImportError:  # torch moved it: the public fallback serves
    AVAILABLE = False


def build_on_meta(skip: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]) -> Any | None:
    """A context that builds on meta and asks ``skip(func, args, kwargs)`` first (its answer, or
    ``NotImplemented`` to run ``func``); None when the hook is unavailable."""
    if not AVAILABLE:
        return None
    return _BuildOnMeta(skip)


if AVAILABLE:

    class _BuildOnMeta(DeviceContext):
        def __init__(self, skip: Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]) -> None:
            super().__init__("meta")
            self.skip = skip

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch protocol)
            kwargs = kwargs or {}
            answer = self.skip(func, args, kwargs)
            if answer is not NotImplemented:
                return answer
            if func in _device_constructors() and kwargs.get("device") is None:
                kwargs["device"] = self.device
            return func(*args, **kwargs)
