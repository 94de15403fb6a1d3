"""The memory model: exact peak bytes of one local training step, without data or a GPU.

Who may train what is decided by comparing a device's budget with the peak of
one local step of the exact (sub-)model the method would give it (spec
common.md §1.2). The step — forward, loss, backward, optimizer step, in the
steady state where momentum buffers already exist — is *run* on the ``meta``
device (shapes and dtypes, no storage, no arithmetic) under a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` that keeps the live
bytes of every storage:

* storages that exist before the step (parameters, buffers, optimizer state,
  the input batch) are registered up front, so in-place updates of weights and
  momentum buffers are not mistaken for new allocations;
* the live set is keyed by storage (views share one) and an entry is released
  when the storage's Python object is finalized, i.e. when the last tensor
  that uses it dies;
* an optimizer that can state its update's temporaries (``LocalSGD`` on the
  per-tensor path: one ``grad + weight_decay * param`` at a time) is taken at
  its word instead of traced op by op; the reports are the same (tested).

What is counted is what a device allocator would see: parameters and buffers
(frozen and trainable), gradients and optimizer state of the trainable tensors
only, saved activations and the temporaries of forward, backward and the
optimizer step, including whatever the method's loss adds. The input batch is
excluded, as in the paper's measurement (peak above the state before the
step, plus the resident model and optimizer state). Kernel-internal scratch
buffers (e.g. a convolution library's workspace) are not visible and are the
remaining gap to a real allocator (docs/memory.md says how large, per backend).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fedbench.errors import ConfigError
from fedbench.tracing import cache as trace_cache
from fedbench.tracing import meta as meta_outputs
from fedbench.tracing._speedups.dispatch import Unguarded
from fedbench.tracing._speedups.meta_kernels import dispatcher
from fedbench.training.adam import LocalAdam
from fedbench.training.loop import LossFn, cross_entropy_loss
from fedbench.training.sgd import LocalSGD, StepOptimizer

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SGDSpec:
    """SGD as the engine's local loop builds it (spec common.md §1.3); hashable, so it can key the cache.

    ``foreach`` picks torch's multi-tensor path, which is the default on CUDA and makes
    temporaries the size of all gradients at once; CPU (and meta) default to the
    per-tensor path.
    """

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    foreach: bool = False

    def __call__(self, parameters: Iterable[nn.Parameter]) -> LocalSGD:
        return LocalSGD(
            parameters,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            foreach=self.foreach,
        )

    @classmethod
    def from_train(cls, train: Any, foreach: bool = False) -> SGDSpec:
        """The spec of a :class:`fedbench.config.TrainConfig`."""
        return cls(lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, foreach=foreach)


@dataclass(frozen=True, kw_only=True)
class AdamSpec:
    """Adam as the local loop builds it (:class:`fedbench.training.adam.LocalAdam`); hashable like
    :class:`SGDSpec`. Its two moment estimates per trained tensor are optimizer state, and its
    update is traced op by op."""

    lr: float = 0.01
    weight_decay: float = 5e-4

    def __call__(self, parameters: Iterable[nn.Parameter]) -> LocalAdam:
        return LocalAdam(parameters, lr=self.lr, weight_decay=self.weight_decay)


def optimizer_spec(train: Any) -> SGDSpec | AdamSpec:
    """The memory model's optimizer for a :class:`fedbench.config.TrainConfig`."""
    if getattr(train, "optimizer", "sgd") == "adam":
        return AdamSpec(lr=train.lr, weight_decay=train.weight_decay)
    return SGDSpec.from_train(train)


OptimizerFactory = Callable[[Iterable[nn.Parameter]], StepOptimizer]


@dataclass(frozen=True)
class MemoryReport:
    """Peak bytes of one local step and what was live at that moment.

    ``peak_bytes = params_bytes + grads_bytes + optimizer_bytes + activations_bytes``;
    ``params_bytes`` includes buffers (BatchNorm statistics), ``activations_bytes``
    the saved activations and temporaries live at the peak.
    """

    peak_bytes: int
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activations_bytes: int
    trainable_params: int
    total_params: int

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class _LiveStorages(Unguarded, TorchDispatchMode):
    """Tracks the live bytes of every storage an op produces while the mode is active.

    A storage is keyed by its Python object's ``id``: torch keeps one object per live storage,
    shared by all its views, and the weak reference below drops the key when it dies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}  # storage key -> (allocation serial, bytes)
        self.events: list[tuple[int, int]] = []  # (allocation serial, +bytes | -bytes), in order
        self._refs: dict[int, weakref.ref] = {}
        self._serials = itertools.count()
        self.recording = True
        self._dispatch = dispatcher()  # each op's kernel, or its remembered outputs

    def register(self, tensor: torch.Tensor) -> int:
        """Mark a tensor's storage as live (idempotent); returns its allocation serial."""
        storage = tensor.untyped_storage()
        key = id(storage)
        if key in self.live:
            return self.live[key][0]
        serial, nbytes = next(self._serials), storage.nbytes()
        self.live[key] = (serial, nbytes)
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._release(key))
        if self.recording:
            self.events.append((serial, nbytes))
        return serial

    def _release(self, key: int) -> None:
        entry = self.live.pop(key, None)
        self._refs.pop(key, None)
        if entry is not None and self.recording:
            self.events.append((entry[0], -entry[1]))

    def transients(self, sizes: Iterable[int]) -> None:
        """Record allocations of ``sizes`` bytes, each freed before the next is made."""
        for nbytes in sizes:
            serial = next(self._serials)
            self.events += ((serial, nbytes), (serial, -nbytes))

    def serial_of(self, tensor: torch.Tensor) -> int | None:
        entry = self.live.get(id(tensor.untyped_storage()))
        return None if entry is None else entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch protocol)
        out = self._dispatch(func, args, kwargs or {})
        self._register_outputs(out)
        return out

    def _register_outputs(self, out: Any) -> None:
        """Register every tensor an op returned: one tensor, or (lists in) a tuple of them."""
        if isinstance(out, torch.Tensor):
            self.register(out)
        elif isinstance(out, (tuple, list)):
            for item in out:
                self._register_outputs(item)


def _meta_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``model`` on the meta device without copying any real data."""
    memo: dict[int, Any] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(
            torch.empty_like(param, device="meta", dtype=dtype if param.is_floating_point() else None),
            requires_grad=param.requires_grad,
        )
    for buffer in model.buffers():
        memo[id(buffer)] = torch.empty_like(
            buffer, device="meta", dtype=dtype if buffer.is_floating_point() else None
        )
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def meta_training_copy(model: nn.Module, dtype: torch.dtype, trainable: frozenset[str]) -> Iterator[nn.Module]:
    """``model`` on the meta device in training mode, with exactly ``trainable`` requiring gradients.

    A model that already lives on meta in ``dtype`` (the sub-models ``fedbench memory`` and the
    width methods build) is lent as it is and put back afterwards (gradient flags, gradients,
    modes): deep-copying module trees was a sixth of a memory sweep. Any other model (a run's
    model with real weights) is copied to meta without its data.
    """
    params = dict(model.named_parameters())
    tensors = itertools.chain(params.values(), model.buffers())
    if not all(t.is_meta and (t.dtype == dtype or not t.is_floating_point()) for t in tensors):
        copied = _meta_copy(model, dtype)
        copied.train()
        for name, param in copied.named_parameters():
            param.requires_grad_(name in trainable)
        yield copied
        return
    saved = {name: (param.requires_grad, param.grad) for name, param in params.items()}
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.train()
        for name, param in params.items():
            param.requires_grad_(name in trainable)
        yield model
    finally:
        for name, param in params.items():
            param.requires_grad_(saved[name][0])
            param.grad = saved[name][1]
        for module, training in modes:
            module.training = training


def _arch_name(model: nn.Module) -> str:
    return str(getattr(model, "arch", type(model).__name__))


def _check_trainable(model: nn.Module, trainable: Iterable[str] | None) -> frozenset[str]:
    names = [name for name, _ in model.named_parameters()]
    if trainable is None:
        return frozenset(names)
    chosen = frozenset(trainable)
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ValueError(f"trainable names not in the model: {', '.join(unknown[:5])}")
    return chosen


def peak_training_bytes(
    model: nn.Module,
    trainable: Iterable[str] | None = None,
    batch_size: int = 64,
    input_shape: tuple[int, ...] | None = None,
    optimizer: OptimizerFactory = SGDSpec(),
    loss_fn: LossFn = cross_entropy_loss,
    num_classes: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> MemoryReport:
    """Peak bytes of one steady-state local step of ``model`` (see the module docstring).

    ``trainable`` names the parameters that get gradients (all by default); every
    other parameter is frozen and costs neither gradient nor optimizer state.
    ``loss_fn(model, images, labels)`` is the method's local objective; whatever
    it needs beyond the model's forward (a projection head, kernel matrices) is
    counted, so parameters it uses must live inside ``model``. ``input_shape`` and
    ``num_classes`` default to the model's own attributes (every BlockModel has them).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size ({batch_size}) must be >= 1")
    input_shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()))
    if not input_shape:
        raise ConfigError(f"input shape of model '{_arch_name(model)}' is unknown; pass input_shape")
    num_classes = int(num_classes if num_classes is not None else getattr(model, "num_classes", 2))
    chosen = _check_trainable(model, trainable)

    with meta_training_copy(model, dtype, chosen) as meta:
        return _traced_step(meta, batch_size, input_shape, optimizer, loss_fn, dtype)


def _traced_step(
    meta: nn.Module,
    batch_size: int,
    input_shape: tuple[int, ...],
    optimizer: OptimizerFactory,
    loss_fn: LossFn,
    dtype: torch.dtype,
) -> MemoryReport:
    """The trace and replay of :func:`peak_training_bytes` on a prepared meta model."""
    all_params = list(meta.parameters())  # walked once: each walk recurses through every module
    params = [p for p in all_params if p.requires_grad]
    opt = optimizer(params) if params else None
    images = torch.empty((batch_size, *input_shape), device="meta", dtype=dtype)
    labels = torch.zeros((batch_size,), device="meta", dtype=torch.int64)

    def step() -> None:
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        loss = loss_fn(meta, images, labels)
        if params:
            loss.backward()
            # An update whose allocations the optimizer can state (LocalSGD's per-tensor path)
            # is recorded from that statement; any other is traced.
            temporaries = getattr(opt, "update_temporaries", lambda: None)()
            if temporaries is None:
                opt.step()
            else:
                tracker.transients(temporaries)

    try:
        allocate_state = getattr(opt, "allocate_state", None)
        if allocate_state is not None:  # the steady state's optimizer state, without a step (LocalSGD)
            allocate_state()
        elif opt is not None:  # any other optimizer: one warm-up update creates it
            for param in params:
                param.grad = torch.empty_like(param)
            with meta_outputs.RememberedKernels():
                opt.step()
            opt.zero_grad(set_to_none=True)
        tracker = _LiveStorages()
        tracker.recording = False
        resident = {tracker.register(t) for t in itertools.chain(all_params, meta.buffers())}
        optim_state = {
            tracker.register(t)
            for state in (opt.state.values() if opt is not None else ())
            for t in state.values()
            if isinstance(t, torch.Tensor)
        }
        input_serials = {tracker.register(images), tracker.register(labels)}
        baseline = sorted(tracker.live.values())
        tracker.recording = True
        with tracker:
            step()
        grads = {tracker.serial_of(p.grad) for p in params if p.grad is not None}
    except RuntimeError as exc:
        raise ConfigError(
            f"model '{_arch_name(meta)}' cannot take inputs of shape {input_shape} "
            f"at batch {batch_size}: {str(exc).splitlines()[0]}"
        ) from exc

    # Replay: the live set at the highest point of the step.
    live = dict(baseline)
    total = sum(live.values())
    peak_total, peak_live = total, dict(live)
    for serial, delta in tracker.events:
        if delta >= 0:
            live[serial] = delta
        else:
            live.pop(serial, None)
        total += delta
        if total > peak_total:
            peak_total, peak_live = total, dict(live)

    def bytes_of(serials: set[int | None]) -> int:
        return sum(n for s, n in peak_live.items() if s in serials)

    params_bytes = bytes_of(resident)
    optimizer_bytes = bytes_of(optim_state)
    grads_bytes = bytes_of(grads)
    input_bytes = bytes_of(input_serials)
    activations_bytes = peak_total - params_bytes - optimizer_bytes - grads_bytes - input_bytes
    return MemoryReport(
        peak_bytes=peak_total - input_bytes,
        params_bytes=params_bytes,
        grads_bytes=grads_bytes,
        optimizer_bytes=optimizer_bytes,
        activations_bytes=activations_bytes,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in all_params),
    )


def model_signature(model: nn.Module) -> Hashable:
    """What identifies a model's memory behaviour for the cache.

    A BlockModel is identified by (arch, width, input shape, classes); any other
    module by its printed structure and parameter shapes, which covers every
    layer hyper-parameter but not custom ``forward`` code — give such a module an
    ``arch`` attribute that says what differs.
    """
    if hasattr(model, "arch"):
        return (
            "arch",
            model.arch,
            getattr(model, "width", None),
            tuple(getattr(model, "input_shape", ())),
            getattr(model, "num_classes", None),
            type(model).__qualname__,
        )
    shapes = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return ("structure", type(model).__qualname__, repr(model), shapes)


# Reports shared by every MemoryModel of the process: a key holds everything that changes the
# answer (optimizer and dtype included), so `fedbench memory` over many methods, a sweep of runs
# in one process and the fleet fit each trace a (sub-)model once. Bounded, oldest out first.
_SHARED_CACHE: OrderedDict[Hashable, MemoryReport] = OrderedDict()
SHARED_CACHE_SIZE = 4096


class MemoryModel:
    """:func:`peak_training_bytes` with a process-wide cache keyed by
    (model signature, trainable set, batch, input shape, dtype, optimizer, loss), and behind it
    the on-disk cache of :mod:`fedbench.tracing.cache` shared by every process."""

    def __init__(self, optimizer: OptimizerFactory = SGDSpec(), dtype: torch.dtype = torch.float32) -> None:
        self.optimizer = optimizer
        self.dtype = dtype
        self._cache = _SHARED_CACHE

    def report(
        self,
        model: nn.Module,
        trainable: Iterable[str] | None = None,
        batch_size: int = 64,
        input_shape: tuple[int, ...] | None = None,
        loss_fn: LossFn = cross_entropy_loss,
    ) -> MemoryReport:
        chosen = _check_trainable(model, trainable)
        shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()))
        key = (model_signature(model), chosen, batch_size, shape, self.dtype, self.optimizer, loss_fn)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
        else:
            found = MemoryReport(**trace_cache.cached(
                "memory",
                (model_signature(model), chosen, batch_size, shape, self.dtype, self.optimizer, loss_fn),
                (model, self.optimizer, loss_fn),
                lambda: peak_training_bytes(
                    model, chosen, batch_size, shape or None, self.optimizer, loss_fn, dtype=self.dtype
                ).as_dict(),
            ))
            self._cache[key] = found
            while len(self._cache) > SHARED_CACHE_SIZE:
                self._cache.popitem(last=False)
            log.debug("memory of %s (%d trainable tensors, batch %d): %d bytes",
                      _arch_name(model), len(chosen), batch_size, found.peak_bytes)
        return found

    def peak_bytes(self, model: nn.Module, trainable: Iterable[str] | None = None, **kwargs: Any) -> int:
        return self.report(model, trainable, **kwargs).peak_bytes


def format_bytes(nbytes: float) -> str:
    """``1.23 GiB`` / ``456.7 MiB``: binary units, like the fleet's budgets (``low_mb`` is in MiB)."""
    if nbytes >= 1024 * MIB:
        return f"{nbytes / (1024 * MIB):.2f} GiB"
    return f"{nbytes / MIB:.1f} MiB"
