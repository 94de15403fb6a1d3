"""Meta-device helpers for the memory model, FLOP counts and sub-model builders.

:func:`building_on_meta` builds modules on the meta device without running their weight
initialisation: on meta a tensor has no values, yet each initialiser would still run torch's
Python reference kernels to validate and "fill" it, and a table over every width of every model
spends most of its building time there. :func:`empty_like` makes a meta tensor's twin through
the C++ factory. :class:`RememberedKernels` replays the outputs of meta kernels seen before.

The faster variants that need torch's private APIs live in :mod:`fedbench.tracing._speedups`; this
module picks them or their public fallbacks (``FEDBENCH_NO_SPEEDUPS``), with the same results.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from fedbench.tracing._speedups import enabled, meta_build, meta_kernels
from fedbench.tracing._speedups.meta_kernels import RememberedKernels

__all__ = ["RememberedKernels", "building_on_meta", "clear", "empty_like"]

_SKIPPED = frozenset({
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_,
    torch.Tensor.bernoulli_, torch.Tensor.exponential_, torch.Tensor.random_,
    torch.Tensor.log_normal_, torch.Tensor.cauchy_, torch.Tensor.geometric_,
    *(getattr(torch.nn.init, name) for name in dir(torch.nn.init)
      if name.endswith("_") and not name.startswith("_") and callable(getattr(torch.nn.init, name))),
})

# ``torch.*_like`` of a meta tensor is a fresh tensor of its layout whatever the fill
# (see empty_like; DepthFL's FedDyn state makes two per parameter of every exit model).
_LIKE = frozenset({torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like,
                   torch.rand_like, torch.randn_like})


def empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(tensor)``, a dense tensor through the C++ factory: on the meta device
    ``empty_like`` (and every ``*_like``) computes the layout in a Python reference kernel, which
    sub-model builds and the memory model's optimizer state call thousands of times."""
    if tensor.layout == torch.strided and tensor.is_contiguous():
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    return torch.empty_like(tensor)


def _skip_on_meta(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A meta tensor back untouched from an initialiser or value-only fill, a meta ``*_like``
    through :func:`empty_like`; ``NotImplemented`` for every other call."""
    if func in _SKIPPED:
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
        if isinstance(target, torch.Tensor) and target.is_meta:
            return target
    elif func in _LIKE:
        source = args[0] if args else None
        if not kwargs and isinstance(source, torch.Tensor) and source.is_meta:
            return empty_like(source)  # inside its own hook a mode is off: no recursion
    return NotImplemented


class _SkipOnMeta(TorchFunctionMode):
    """The public variant's second mode, under ``torch.device("meta")``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch protocol)
        kwargs = kwargs or {}
        answer = _skip_on_meta(func, args, kwargs)
        return func(*args, **kwargs) if answer is NotImplemented else answer


@contextlib.contextmanager
def _public_build() -> Iterator[None]:
    with torch.device("meta"), _SkipOnMeta():
        yield


def building_on_meta() -> contextlib.AbstractContextManager:
    """``with torch.device("meta")``, minus the weight initialisation nobody can read there."""
    fast = meta_build.build_on_meta(_skip_on_meta) if enabled() else None
    return fast if fast is not None else _public_build()


def clear() -> None:
    """Forget every remembered kernel output (tests; a process that changes torch's kernels)."""
    meta_kernels.clear()
