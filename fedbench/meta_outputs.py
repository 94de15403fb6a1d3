"""Remembered meta-kernel outputs, so the memory model traces a sub-model without re-running them.

The memory model (:mod:`fedbench.memory`) runs one training step on the meta device and
only reads the *sizes* of what each op allocates. Many of torch's meta kernels are Python
reference implementations that cost far more than that (BatchNorm's forward and backward
about 2 ms a call), and a sweep over every model and method traces the same convolution,
BatchNorm and optimizer ops on the same shapes hundreds of times. On the meta device an
op's outputs are a pure function of its arguments' metadata (shape, strides, dtype, offset)
and its non-tensor arguments, so the first call's outputs are described and later calls
get fresh tensors of exactly that description.

Two kinds of op qualify. Ops whose outputs are all fresh allocations: every output is a new
storage of exactly its tensor's extent at offset 0, shared with no input and no other output,
and no argument changed shape. And in-place ops that return their first argument itself,
unchanged in shape: later calls return that argument without running. Views, and anything
else that does not pass these checks on its first call, always run for real.

:class:`RememberedKernels` applies the same to meta computations outside the memory model
(a model's block output shapes, the optimizer's warm-up step), and :func:`building_on_meta`
builds modules on the meta device without running their weight initialisation.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch.utils._device import DeviceContext, _device_constructors
from torch.utils._python_dispatch import TorchDispatchMode

# key -> (structure, tensor descriptions) or None (this signature always runs for real)
_KNOWN: dict[Hashable, tuple[Any, ...] | None] = {}
_RETURNS_SELF: dict[Hashable, bool] = {}  # key of an in-place op -> it returned its first argument
_QUALIFIES: dict[Any, bool] = {}  # op -> its schema returns fresh tensors only
_IN_PLACE: dict[Any, bool] = {}  # op -> its schema's first return is its first argument, written
# Non-tensor arguments that are part of a key as they are; keyed with their type, so True and 1
# (equal, same hash) stay apart.
_ATOMS = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
                    torch.memory_format})


class _Unkeyable(Exception):
    """An argument with no stable, hashable description (a SymInt, a Python object)."""


def _describe_arg(value: Any) -> Hashable:
    """Everything of ``value`` a meta kernel's outputs can depend on.

    Called for every argument of every op a memory trace dispatches (~170,000 in a sweep of
    every model and method), so the common cases come first and are tested by type identity.
    """
    kind = type(value)
    if kind in _ATOMS:
        return (kind, value)
    if isinstance(value, torch.Tensor):
        if not value.is_meta:
            if value.dim() != 0 or value.device.type != "cpu":
                raise _Unkeyable  # real data could decide an output's size
            return ("S", value.dtype, value.item())  # a wrapped scalar: its value is part of the key
        return (value.shape, value.stride(), value.dtype, value.storage_offset())
    if isinstance(value, (list, tuple)):  # torch.Size and named tuples too
        return (kind, tuple([_describe_arg(v) for v in value]))
    if isinstance(value, tuple(_ATOMS)):  # an int or str subclass (an IntEnum)
        return (kind, value)
    raise _Unkeyable


def _qualifies(func: Any) -> bool:
    """Every return of the op's schema is a tensor (or list of them) that aliases nothing."""
    found = _QUALIFIES.get(func)
    if found is None:
        returns = func._schema.returns
        found = bool(returns) and all(r.alias_info is None and "Tensor" in str(r.type) for r in returns)
        _QUALIFIES[func] = found
    return found


def _in_place(func: Any) -> bool:
    found = _IN_PLACE.get(func)
    if found is None:
        schema = func._schema
        first_arg = schema.arguments[0].alias_info if schema.arguments else None
        first_return = schema.returns[0].alias_info if len(schema.returns) == 1 else None
        found = bool(first_arg and first_return and first_arg.is_write and first_return.is_write
                     and first_arg.before_set == first_return.before_set)
        _IN_PLACE[func] = found
    return found


def _key(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
    try:
        described = tuple([_describe_arg(arg) for arg in args])
        if kwargs:
            return (func, described, tuple([(name, _describe_arg(kwargs[name])) for name in sorted(kwargs)]))
        return (func, described)
    except _Unkeyable:
        return None


def _call_in_place(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    key = _key(func, args, kwargs)
    if key is not None and _RETURNS_SELF.get(key):
        return args[0]
    shape = (tuple(args[0].shape), args[0].stride()) if args and isinstance(args[0], torch.Tensor) else None
    out = func(*args, **kwargs)
    if key is not None and key not in _RETURNS_SELF:
        _RETURNS_SELF[key] = out is args[0] and (tuple(out.shape), out.stride()) == shape
    return out


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _fresh_extent_bytes(tensor: torch.Tensor) -> int:
    if tensor.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride(), strict=True))
    return span * tensor.element_size()


def _structure(value: Any, seen: set[int], inputs: set[int]) -> Any:
    """A rebuildable description of an op's output, or raise _Unkeyable if it is not fresh."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = storage._cdata
        if (key in seen or key in inputs or value.storage_offset() != 0
                or storage.nbytes() != _fresh_extent_bytes(value)):
            raise _Unkeyable
        seen.add(key)
        return ("T", tuple(value.shape), value.stride(), value.dtype, value.device)
    if isinstance(value, (list, tuple)):
        return (type(value), tuple(_structure(v, seen, inputs) for v in value))
    raise _Unkeyable


def _rebuild(described: Any) -> Any:
    if described is None:
        return None
    if described[0] == "T":
        _, shape, stride, dtype, device = described
        return torch.empty_strided(shape, stride, dtype=dtype, device=device)
    kind, items = described
    return kind(_rebuild(item) for item in items)


def call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)`` on meta tensors, from memory when this signature was seen."""
    if not _qualifies(func):
        return _call_in_place(func, args, kwargs) if _in_place(func) else func(*args, **kwargs)
    key = _key(func, args, kwargs)
    if key is not None:
        known = _KNOWN.get(key, False)
        if known:
            return _rebuild(known)
        if known is None:
            return func(*args, **kwargs)
    inputs = _tensors(args) + _tensors(list(kwargs.values()))
    before = [(tuple(t.shape), t.stride()) for t in inputs]
    out = func(*args, **kwargs)
    if key is not None:
        try:
            if [(tuple(t.shape), t.stride()) for t in inputs] != before:
                raise _Unkeyable  # an argument was resized: not a pure function of the metadata
            _KNOWN[key] = _structure(out, set(), {t.untyped_storage()._cdata for t in inputs})
        except _Unkeyable:
            _KNOWN[key] = None
    return out


def empty_like(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(tensor)``, a dense tensor through the C++ factory: on the meta device
    ``empty_like`` (and every ``*_like``) computes the layout in a Python reference kernel, ~30 µs
    a call, which sub-model builds and the memory model's optimizer state make thousands of."""
    if tensor.layout == torch.strided and tensor.is_contiguous():
        return torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
    return torch.empty_like(tensor)


class RememberedKernels(TorchDispatchMode):
    """Inside it, meta ops run through :func:`call` (for meta computations that track nothing)."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # no torch.compile inside; see memory._LiveStorages

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch protocol)
        return call(func, args, kwargs or {})


def clear() -> None:
    """Forget every remembered output (tests; a process that changes torch's kernels)."""
    _KNOWN.clear()
    _RETURNS_SELF.clear()


class _BuildOnMeta(DeviceContext):
    """``torch.device("meta")`` that returns a meta tensor untouched from ``torch.nn.init`` and the
    value-only in-place fills.

    On the meta device a tensor has no values, yet each initialiser still runs: torch's Python
    reference kernels validate and "fill" it, about 1 ms per ``kaiming_normal_``, and the first
    of them imports torch's compiler (1 s). A sweep of sub-models (every width of every model)
    spent most of its building time there. One mode rather than a second one on top of the device
    context: every torch call made while building (``dim()``, ``size()``) passes through each.
    """

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

    def __init__(self) -> None:
        super().__init__("meta")

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch protocol)
        kwargs = kwargs or {}
        if func in self._SKIPPED:
            target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        elif func in self._LIKE:
            source = args[0] if args else None
            if not kwargs and isinstance(source, torch.Tensor) and source.is_meta:
                return empty_like(source)  # inside its own hook a mode is off: no recursion
        elif func in _device_constructors() and kwargs.get("device") is None:
            kwargs["device"] = self.device
        return func(*args, **kwargs)


def building_on_meta() -> DeviceContext:
    """``with torch.device("meta")``, minus the weight initialisation nobody can read there."""
    return _BuildOnMeta()
