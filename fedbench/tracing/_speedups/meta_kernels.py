"""Remembered meta-kernel outputs, so a trace does not re-run kernels it has seen.

The memory model (:mod:`fedbench.memory.model`) runs one training step on the meta device and only
reads the *sizes* of what each op allocates. Many of torch's meta kernels are Python reference
implementations that cost far more than that (BatchNorm's forward and backward among them), and
a table over every model and method traces the same convolution, BatchNorm and optimizer ops on
the same shapes hundreds of times. On the meta device an op's outputs are a pure function of its
arguments' metadata (shape, strides, dtype, offset) and its non-tensor arguments, so the first
call's outputs are described and later calls get fresh tensors of exactly that description.

Two kinds of op qualify. Ops whose outputs are all fresh allocations: every output is a new
storage of exactly its tensor's extent at offset 0, shared with no input and no other output,
and no argument changed shape. And in-place ops that return their first argument itself,
unchanged in shape: later calls return that argument without running. Views, and anything
else that does not pass these checks on its first call, always run for real.

**Private API.** Which ops qualify is read from the op's schema, ``OpOverload._schema`` (its
returns' and first argument's alias information). Without it (:data:`AVAILABLE` false) every op
runs for real, which is the fallback :func:`dispatcher` also gives under ``FEDBENCH_NO_SPEEDUPS``.
The memory model's own mode calls :func:`dispatcher`'s choice for every op; :class:`RememberedKernels`
does the same for meta work that tracks nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedbench.tracing._speedups import enabled
from fedbench.tracing._speedups.dispatch import Unguarded


def _schema_is_readable() -> bool:
    """Whether torch still describes an op's aliasing the way :func:`_qualifies` reads it."""
    try:
        schema = torch.ops.aten.add_.Tensor._schema
        first = schema.arguments[0].alias_info
        return bool(first.is_write) and schema.returns[0].alias_info.before_set == first.before_set
    except (AttributeError, IndexError, TypeError):
        return False


AVAILABLE = _schema_is_readable()

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


def run(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The fallback: the kernel itself."""
    return func(*args, **kwargs)


def dispatcher() -> Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]:
    """What a dispatch mode calls for each op: :func:`call`, or :func:`run` when the speed-ups
    are switched off or torch no longer exposes op schemas."""
    return call if AVAILABLE and enabled() else run


def _describe_arg(value: Any) -> Hashable:
    """Everything of ``value`` a meta kernel's outputs can depend on.

    Called for every argument of every op a memory trace dispatches, so the common cases come
    first and are tested by type identity.
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
    """A rebuildable description of an op's output, or raise _Unkeyable if it is not fresh.

    Storages are told apart by their Python object: torch keeps one per live storage, shared by
    every view of it."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        storage = value.untyped_storage()
        key = id(storage)
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
            _KNOWN[key] = _structure(out, set(), {id(t.untyped_storage()) for t in inputs})
        except _Unkeyable:
            _KNOWN[key] = None
    return out


class RememberedKernels(Unguarded, TorchDispatchMode):
    """Inside it, meta ops run through :func:`call` (for meta computations that track nothing:
    a model's block output shapes, an optimizer's warm-up step); a pass-through when switched off."""

    def __init__(self) -> None:
        super().__init__()
        self._dispatch = dispatcher()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch protocol)
        return self._dispatch(func, args, kwargs or {})


def clear() -> None:
    """Forget every remembered output (tests; a process that changes torch's kernels)."""
    _KNOWN.clear()
    _RETURNS_SELF.clear()
