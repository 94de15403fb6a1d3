"""A worker's replica of a run, kept in step with the server's method round by round.

The process and Ray executors train a round's devices in other processes. Each worker builds
its own copy of the run once (data loaded once, :func:`fedbench.engine.prepare` and
``make_method`` from the same :class:`RunConfig`), then, every round, receives what the
server's method holds as a :class:`RoundMessage` and runs ``local_update`` for its share of
the round's assignments. What travels, and why it is exact:

* **Modules by reference, tensors as tensors.** Every ``nn.Module`` the method keeps (global
  model, NeuLite's output modules, DepthFL's exits, ...) is pickled once, in the first message
  (``bootstrap``), so the worker's object graph is the server's: shared blocks stay shared.
  After that a module is a reference ``(MODULE, i)`` into that table, and a round carries the
  values of all their parameters and buffers as a list of tensors, copied in place. A new
  module object or a replaced tensor on the server changes the table and sends a new bootstrap.
* **The rest of the method's declared state** (``Method.server_state``: Oort's utilities, TiFL's
  credits, FedRolex's round counter, ...) is pickled per attribute; only the attributes whose
  bytes changed since the last round are sent. What the worker's ``local_update`` adds to an
  attribute the server never changes (a cache of client models) is kept.
* **The round's assignments** are pickled with the same module references, so a work that
  carries a module (a NeuLite stage ``Workload``) resolves to the worker's own copy of it.
* **Per-client state** (``Method.client_state``, DepthFL's FedDyn vectors) goes to the worker
  that trains the client and comes back with its updates.
* **Nothing else may change** in a worker's ``local_update``: a public attribute that is not
  declared and changes there would be lost, so it is a :class:`PluginError` naming it.
* **Updates come back** with module references and their ``work`` mapped to the server's own
  assignment objects, so ``aggregate`` sees exactly what the serial executor gives it.

Every client's randomness is derived from (seed, round, client) (:mod:`fedbench.seeding`), so
a client trained in a worker computes bit for bit what it computes in the server, given the
same torch thread count (PyTorch's CPU kernels reduce in a thread-count-dependent order).
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedbench.config import RunConfig
from fedbench.core.context import RunContext
from fedbench.core.method import Assignment, ClientContext, Method, Update
from fedbench.core.setup import make_method, prepare, run_context
from fedbench.data import FederatedData
from fedbench.errors import ExecutorError, PluginError

MODULE, WORK, CONTEXT, METHOD, TENSOR = "module", "work", "context", "method", "tensor"
_BY_VALUE = (type(None), bool, int, float, complex, str, bytes)


@dataclass
class RoundMessage:
    """What the server sends every worker for one round (one object, shared by all workers)."""

    round_idx: int
    bootstrap: bytes | None  # the module table, pickled whole; None: the worker's table stands
    tensors: list[torch.Tensor] | None  # every tensor of the table's modules; None with a bootstrap
    changed: dict[str, bytes]  # method attributes whose pickled bytes changed
    removed: list[str]  # method attributes the server no longer has
    context: dict[str, Any]  # RunContext.checkpoint_state()
    assignments: bytes
    device_state: dict[str, dict[int, Any]] = field(default_factory=dict)


@dataclass
class WorkerResult:
    """A worker's answer: its share's updates (pickled with references) and device state."""

    payload: bytes  # pickled list[(assignment index, Update)]
    device_state: dict[str, dict[int, Any]]
    tensors: list[torch.Tensor] | None = None  # in-process trainers: the payload's tensors, by reference


# ----------------------------------------------------------------- references
class ModuleTable:
    """The modules a method holds, numbered in the order pickling meets them."""

    def __init__(self, modules: Sequence[nn.Module] = ()) -> None:
        self.modules: list[nn.Module] = []
        self._index: dict[int, int] = {}
        for module in modules:
            self.add(module)

    def add(self, module: nn.Module) -> int:
        self._index[id(module)] = len(self.modules)
        self.modules.append(module)
        return self._index[id(module)]

    def find(self, module: nn.Module) -> int | None:
        return self._index.get(id(module))

    def tensors(self) -> list[torch.Tensor]:
        """Every parameter and buffer of the table's modules, each once, in table order."""
        seen: set[int] = set()
        found = []
        for module in self.modules:
            for tensor in [*module.parameters(), *module.buffers()]:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    found.append(tensor)
        return found

    def signature(self) -> list[tuple[int, tuple[int, ...], torch.dtype]]:
        """Identity, shape and dtype of every tensor: equal signatures mean the same graph."""
        return [(id(m), (), torch.uint8) for m in self.modules] + [
            (id(t), tuple(t.shape), t.dtype) for t in self.tensors()
        ]


class _Pickler(pickle.Pickler):
    """Pickles modules (and optionally known objects) as references into tables; with ``tensors``
    (a list), every tensor too, appended to it: for a reader in the same process, which then takes
    the tensors themselves instead of copies through bytes (a GPU tensor's go through the host)."""

    def __init__(
        self, file: io.BytesIO, table: ModuleTable, *, grow: bool, shared: Mapping[int, tuple[str, int]],
        tensors: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.table, self.grow, self.shared, self.tensors = table, grow, shared, tensors

    def persistent_id(self, obj: Any) -> tuple[str, int] | None:
        if isinstance(obj, _BY_VALUE):
            return None
        if isinstance(obj, nn.Module):
            index = self.table.find(obj)
            if index is None and self.grow:
                index = self.table.add(obj)
            return (MODULE, index) if index is not None else None  # unknown: pickled whole
        if self.tensors is not None and isinstance(obj, torch.Tensor):
            self.tensors.append(obj)
            return (TENSOR, len(self.tensors) - 1)
        return self.shared.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, modules: Sequence[nn.Module], shared: Mapping[str, Sequence[Any]]) -> None:
        super().__init__(file)
        self.modules, self.shared = modules, shared

    def persistent_load(self, pid: tuple[str, int]) -> Any:
        kind, index = pid
        return self.modules[index] if kind == MODULE else self.shared[kind][index]


def dumps(obj: Any, table: ModuleTable, *, grow: bool = False, shared: Mapping[int, tuple[str, int]] = {},
          tensors: list[torch.Tensor] | None = None) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, table, grow=grow, shared=shared, tensors=tensors).dump(obj)
    return buffer.getvalue()


def loads(data: bytes, modules: Sequence[nn.Module], shared: Mapping[str, Sequence[Any]]) -> Any:
    return _Unpickler(io.BytesIO(data), modules, shared).load()


def _run_objects(method: Method) -> tuple[dict[int, tuple[str, int]], dict[str, list[Any]]]:
    """The method, its context and the context's parts (data set, fleet, memory model, clock)
    travel as references: each side has its own, so a method that keeps one never ships it."""
    objects: dict[str, list[Any]] = {METHOD: [method], CONTEXT: [method.ctx]}
    for name, value in vars(method.ctx).items():
        if not isinstance(value, (*_BY_VALUE, set, list, tuple, dict)):
            objects[f"{CONTEXT}.{name}"] = [value]
    objects[f"{CONTEXT}.data.dataset"] = [method.ctx.data.dataset]
    return {id(values[0]): (kind, 0) for kind, values in objects.items()}, objects


def client_state_attributes(method: Method) -> frozenset[str]:
    """The method's per-client attributes, checked: each must be a dict keyed by client id."""
    names = frozenset(type(method).client_state_names())
    for name in names:
        if not isinstance(getattr(method, name, None), dict):
            raise PluginError(
                f"method {type(method).__name__}: client_state names '{name}', which is "
                f"{type(getattr(method, name, None)).__name__}, not a dict keyed by client id"
            )
    return names


def shipped_state(method: Method) -> dict[str, Any]:
    """What a round's message carries: the declared state, plus every public attribute that holds
    a module, so that the worker's views of the declared modules (DepthFL's full exit model,
    NeuLite's stage models) are the very objects the declared state unpickles into."""
    shipped = dict(method.state_values())
    for name, value in vars(method).items():
        if not name.startswith("_") and name not in shipped and name != "ctx" and _holds_module(value):
            shipped[name] = value
    return shipped


def _holds_module(value: Any, depth: int = 0) -> bool:
    if isinstance(value, nn.Module):
        return True
    if depth > 3:
        return False
    if isinstance(value, Mapping):
        return any(_holds_module(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_module(v, depth + 1) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return any(_holds_module(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value))
    return False


def undeclared_summary(method: Method) -> dict[str, Any]:
    """A cheap picture of the public attributes a method does not declare: identity, and the value
    of plain ones (numbers, strings, small containers of them). Tensors' contents and modules are
    not looked into (that is :func:`fedbench.testing.check_method`'s deeper check)."""
    declared = set(method.state_names()) | {"ctx", "options"}
    summary: dict[str, Any] = {}
    for name, value in vars(method).items():
        if name.startswith("_") or name in declared:
            continue
        summary[name] = _plain_value(value) if _holds_module(value) else (id(value), _plain_value(value))
    return summary


def _plain_value(value: Any, budget: int = 1000) -> Any:
    if isinstance(value, _BY_VALUE):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and len(value) <= budget:
        items = [_plain_value(v, budget // 10) for v in value]
        return (type(value).__name__, len(value), tuple(items) if all(i is not _OPAQUE for i in items) else _OPAQUE)
    if isinstance(value, dict) and len(value) <= budget:
        items = [(k, _plain_value(v, budget // 10)) for k, v in value.items() if isinstance(k, _BY_VALUE)]
        return ("dict", len(value), tuple(items))
    return _OPAQUE


_OPAQUE = object()


def changed_undeclared(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Names whose summary differs, or that appeared or disappeared."""
    return sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))


# -------------------------------------------------------------------- server
class ServerSync:
    """The server's side: builds each round's message and folds the workers' results back in."""

    def __init__(self, method: Method) -> None:
        self.method = method
        self.device_attributes = client_state_attributes(method)
        self._table: ModuleTable | None = None
        self._signature: list[tuple[int, tuple[int, ...], torch.dtype]] | None = None
        self._sent: dict[str, bytes] = {}
        self._undeclared = undeclared_summary(method)

    def message(self, assignments: Sequence[Assignment], round_idx: int) -> RoundMessage:
        method = self.method
        self._check_undeclared(round_idx)
        state = {k: v for k, v in shipped_state(method).items() if k not in self.device_attributes}
        table = ModuleTable()
        shared, _ = _run_objects(method)
        blobs = {name: dumps(state[name], table, grow=True, shared=shared) for name in sorted(state)}
        signature = table.signature()
        bootstrap = None
        if signature != self._signature:  # first round, or the method made or replaced a module
            bootstrap = dumps(table.modules, ModuleTable(), shared=shared)  # modules whole, once
            self._sent = {}
        self._table, self._signature = table, signature
        changed = {name: blob for name, blob in blobs.items() if self._sent.get(name) != blob}
        removed = sorted(set(self._sent) - set(blobs))
        self._sent = blobs
        clients = [a.client_id for a in assignments]
        device_state = {
            name: {c: getattr(method, name)[c] for c in clients if c in getattr(method, name)}
            for name in self.device_attributes
        }
        return RoundMessage(
            round_idx=round_idx,
            bootstrap=bootstrap,
            tensors=None if bootstrap is not None else [t.detach() for t in table.tensors()],
            changed=changed,
            removed=removed,
            context=method.ctx.checkpoint_state(),
            assignments=dumps(list(assignments), table, shared=shared),
            device_state=device_state,
        )

    def _check_undeclared(self, round_idx: int) -> None:
        """The workers hold the undeclared attributes as ``__init__`` made them: one the server
        changed since the last round (in ``aggregate``, ``assign``, ``evaluate``, ...) would
        silently differ there, so the run stops naming it."""
        now = undeclared_summary(self.method)
        changed = changed_undeclared(self._undeclared, now)
        if changed:
            raise PluginError(
                f"method {type(self.method).__name__}: {', '.join(changed)} changed on the server before round "
                f"{round_idx + 1}, but is not declared state, so worker processes would train with its old value; "
                "add it to server_state (or prefix it with _ if it is a cache)"
            )
        self._undeclared = now

    def updates(self, assignments: Sequence[Assignment], results: Sequence[WorkerResult]) -> list[Update]:
        """The round's updates in assignment order; device state merged into the method."""
        assert self._table is not None, "message() builds the table first"
        _, objects = _run_objects(self.method)
        objects = {**objects, WORK: [a.work for a in assignments]}
        by_index: dict[int, Update] = {}
        for result in results:
            for index, update in loads(result.payload, self._table.modules, {**objects, TENSOR: result.tensors or []}):
                by_index[index] = update
            for name, entries in result.device_state.items():
                getattr(self.method, name).update(entries)
        missing = sorted(set(range(len(assignments))) - set(by_index))
        if missing:
            raise RuntimeError(f"the workers returned no update for assignments {missing}")
        return [by_index[i] for i in range(len(assignments))]


# -------------------------------------------------------------------- worker
class WorkerReplica:
    """A worker's copy of the run: its own data, context and method, synced by messages.

    ``threads``: the worker process's torch threads (None: leave the process's setting, for a
    trainer thread in the server's process). ``data``: the server's split data set, shared by a
    replica in the same process instead of loaded again (a run never changes it)."""

    def __init__(self, config: RunConfig, threads: int | None, data: FederatedData | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.config = config
        ctx = prepare(config)[0] if data is None else run_context(config, data)
        self.method = make_method(ctx)
        self.device_attributes = client_state_attributes(self.method)
        self._modules: list[nn.Module] = []
        self._tensors: list[torch.Tensor] = []
        self._state: dict[str, Any] = {}

    @property
    def ctx(self) -> RunContext:
        return self.method.ctx

    def apply(self, message: RoundMessage) -> list[Assignment]:
        """Bring the method to the server's state of this round; the round's assignments."""
        _, objects = _run_objects(self.method)
        if message.bootstrap is not None:
            self._modules = loads(message.bootstrap, [], objects)
            self._tensors = ModuleTable(self._modules).tensors()
            self._state = {}
        else:
            with torch.no_grad():
                for mine, theirs in zip(self._tensors, message.tensors or [], strict=True):
                    mine.copy_(theirs)
        for name in message.removed:
            self._state.pop(name, None)
            if hasattr(self.method, name):
                delattr(self.method, name)
        for name, blob in message.changed.items():
            self._state[name] = loads(blob, self._modules, objects)
        for name, value in self._state.items():
            setattr(self.method, name, value)
        self.ctx.restore_state(message.context)
        for name in self.device_attributes:
            setattr(self.method, name, dict(message.device_state.get(name, {})))
        return loads(message.assignments, self._modules, objects)

    def train(self, message: RoundMessage, share: Sequence[int], in_process: bool = False,
              stop: threading.Event | None = None) -> WorkerResult:
        """Run ``local_update`` for the assignments at positions ``share``; ``in_process``: the
        server reads the result in this process, so the updates' tensors go by reference;
        ``stop``: once set, the share is given up before its next client (the round is lost)."""
        assignments = self.apply(message)
        before = undeclared_summary(self.method)
        updates = []
        for i in share:
            if stop is not None and stop.is_set():
                raise ExecutorError(f"round {message.round_idx + 1} given up: the executor was closed")
            updates.append((i, self.method.local_update(ClientContext.of(self.ctx, assignments[i], message.round_idx))))
        changed = changed_undeclared(before, undeclared_summary(self.method))
        if changed:
            raise PluginError(
                f"method {type(self.method).__name__}: local_update changed {', '.join(changed)}, which "
                "is not declared state and would be lost in a worker process; add it to server_state or "
                "client_state (or prefix it with _ if it is a cache)"
            )
        shared, _ = _run_objects(self.method)
        works = {id(a.work): (WORK, i) for i, a in enumerate(assignments) if not isinstance(a.work, _BY_VALUE)}
        tensors: list[torch.Tensor] | None = [] if in_process else None
        payload = dumps(updates, ModuleTable(self._modules), shared={**works, **shared}, tensors=tensors)
        trained = {assignments[i].client_id for i in share}
        device_state = {
            name: {c: v for c, v in getattr(self.method, name).items() if c in trained}
            for name in self.device_attributes
        }
        return WorkerResult(payload, device_state, tensors)


def split_work(costs: Sequence[int], workers: int) -> list[list[int]]:
    """Assignment positions per worker: longest first to the least loaded worker (ties: lowest
    id), so a round's slowest worker has as little as possible; each share keeps round order."""
    loads_ = [0] * workers
    shares: list[list[int]] = [[] for _ in range(workers)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        target = min(range(workers), key=lambda w: (loads_[w], w))
        shares[target].append(index)
        loads_[target] += costs[index]
    return [sorted(share) for share in shares]
