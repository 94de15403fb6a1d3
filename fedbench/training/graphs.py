"""Local SGD steps replayed from a captured CUDA graph (run config ``cuda_graphs``).

A client's ResNet step at batch 64 is a few hundred small kernels; on a large GPU the host takes
longer to launch them than the GPU takes to run them, so a step costs its launch time. A CUDA
graph records the launches of one whole step (zero grads, forward, loss, backward, clipping, SGD
update) once and replays them with one call. :class:`GraphedSteps` does that per client: the
first full-size batches run eagerly (they warm up cuDNN, cuBLAS and the momentum buffers), the
next one is captured, and every later full-size batch is copied into the captured input tensors
and replayed; a smaller last batch of an epoch runs eagerly (but see kept steps below). The
kernels are those of the eager step, so a graphed client trains as an eager one does, up to GPU
non-determinism.

A graph replays the tensors it was captured with: it is captured afresh for every call of
:func:`fedbench.training.loop.local_sgd` and dropped after it, so whatever a method's loss reads
(FedProx's start weights) is fixed for the graph's whole life. Only a
loss marked :func:`graph_reusable` (a pure function of the model and the batch, such as plain
cross-entropy, or one whose other tensors the method refills in place per client, such as
DepthFL's FedDyn vectors or HeteroFL's class mask) lets one capture serve the next clients too: a
:class:`StepGraphCache` keeps the graph and its optimizer, per model, while the model's tensors,
the loss and the SGD settings stay the same (the client's weights are copied into the same
tensors; its momentum buffers are zeroed in place, which the first update then fills exactly as
a fresh optimizer's would). A kept step also graphs
each smaller batch size once it has come twice: an epoch's last batch has one of at most
``batch_size - 1`` sizes, which recur over a run's clients and rounds, so after the first rounds no
step of such a run is eager.

A loss marked :func:`graph_safe` that reads a value back to the host would be frozen at its
captured value, or break the capture. The last warm-up step of each batch size therefore runs
with host synchronisations turned into errors (``torch.cuda.set_sync_debug_mode``), and such a
loss stops the run with one line naming it, before anything is captured (not beside other
trainer threads, executor ``streams``: torch's switch is process-wide). A capture that fails anyway stops
the run too: a failed capture can leave the CUDA stream and allocator mid-capture, so no later
step of the process could be trusted.

The capture itself is :class:`CudaStepGraph`. :class:`ReplayedStep` calls the recorded step
again instead of replaying a graph; the tests use it on the CPU to hold a graphed client's
training to the eager one's, bit for bit, through the same buffers and steps.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from fedbench.errors import PluginError

WARMUP_STEPS = 2  # eager full-size steps before the capture (PyTorch's examples use a few)
_CAPTURING = threading.Lock()  # one capture at a time in a process
# What torch raises for a synchronising op under ``set_sync_debug_mode("error")``.
HOST_SYNC_ERROR = "called a synchronizing CUDA operation"


class StepGraph(Protocol):
    """Records one step and replays it."""

    def warmup(self, strict: bool) -> contextlib.AbstractContextManager:
        """Context of an eager warm-up step; ``strict``: a host synchronisation in it raises a
        RuntimeError containing :data:`HOST_SYNC_ERROR`."""
        ...

    def capture(self, step: Callable[[], None]) -> None: ...

    def replay(self) -> None: ...

    def sibling(self) -> StepGraph:
        """A graph for the same step at another batch size, replayed in turn with this one."""
        ...


class CudaStepGraph:
    """``torch.cuda.CUDAGraph`` around one step. Warm-up and capture share one side stream, as in
    PyTorch's whole-network capture: the momentum buffers and workspaces the warm-up makes belong
    to the stream the graph then runs on.

    Siblings (one per batch size of the same local training) share the stream and one memory pool:
    they never run at once, and nothing a replay leaves in the pool is read after the next replay
    starts (the loss it returns is added to the running total, in stream order, first), so the
    pool holds the largest step's temporaries rather than every size's."""

    def __init__(self, stream: torch.cuda.Stream | None = None, pool: object | None = None) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.stream = stream if stream is not None else torch.cuda.Stream()
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()

    @contextlib.contextmanager
    def warmup(self, strict: bool) -> Iterator[None]:
        self.stream.wait_stream(torch.cuda.current_stream())
        previous = torch.cuda.get_sync_debug_mode()
        try:
            with torch.cuda.stream(self.stream):
                if strict:
                    torch.cuda.set_sync_debug_mode("error")
                yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
            torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, step: Callable[[], None]) -> None:
        # CUDAGraph's own begin and end, without ``torch.cuda.graph``'s device-wide synchronisation
        # and emptying of the allocator's cache before each capture: with a capture per client
        # (a loss made per client) those would stall the GPU and send every later allocation back
        # to cudaMalloc. Trainer threads (executor ``streams``) capture one at a time;
        # "thread_local" lets the others allocate and synchronise meanwhile, outside the capture.
        with _CAPTURING, torch.cuda.stream(self.stream):
            self.graph.capture_begin(self.pool, capture_error_mode="thread_local")
            try:
                step()
            finally:
                self.graph.capture_end()

    def replay(self) -> None:
        self.graph.replay()

    def sibling(self) -> CudaStepGraph:
        return CudaStepGraph(self.stream, self.pool)


class ReplayedStep:
    """Calls the recorded step again on each replay: the same buffers and order as a graph, on any
    device (the tests' stand-in for :class:`CudaStepGraph` on a CPU)."""

    def __init__(self) -> None:
        self.step: Callable[[], None] | None = None

    def warmup(self, strict: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def capture(self, step: Callable[[], None]) -> None:
        self.step = step

    def replay(self) -> None:
        assert self.step is not None, "replay before capture"
        self.step()

    def sibling(self) -> ReplayedStep:
        return type(self)()


GRAPH_SAFE = "__fedbench_graph_safe__"


def graph_safe(loss: object) -> object:
    """Marks a loss function (or a loss class, for its instances) as safe to replay from a graph.

    A graph replays GPU work only: a loss qualifies when everything it does per batch is GPU work
    on tensors that live through the whole local training: no Python state that changes per call
    (counters, lists of tensors), no new tensor kept past the step, no value read back to the host.
    Accumulating into a tensor made before training with an in-place op is fine."""
    setattr(loss, GRAPH_SAFE, True)
    return loss


def is_graph_safe(loss: object) -> bool:
    return bool(getattr(loss, GRAPH_SAFE, False))


GRAPH_REUSABLE = "__fedbench_graph_reusable__"


def graph_reusable(loss: object) -> object:
    """Marks a loss as a pure function of ``(model, images, labels)``: it reads no tensor but the
    model's and the batch, keeps nothing per client, so a graph of one client's step replays any
    other client's step on the same model. Implies :func:`graph_safe`."""
    setattr(loss, GRAPH_SAFE, True)
    setattr(loss, GRAPH_REUSABLE, True)
    return loss


def is_graph_reusable(loss: object) -> bool:
    return bool(getattr(loss, GRAPH_REUSABLE, False))


def step_graphs(device: torch.device, enabled: bool) -> Callable[[], StepGraph] | None:
    """The graph maker for a run's local training: CUDA graphs where asked for on a GPU, else none."""
    return CudaStepGraph if enabled and device.type == "cuda" else None


def _first_cause(exc: BaseException) -> str:
    """The first line of the error a failure started with: a capture that fails inside the step
    raises again when it ends, with the real cause as the context."""
    while exc.__context__ is not None:
        exc = exc.__context__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@dataclass
class _SizeGraph:
    """One batch size's graph: how often that size came, and once captured, its static inputs and loss."""

    graph: StepGraph
    seen: int = 0
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    loss: torch.Tensor | None = None


class GraphedSteps:
    """Runs ``step(images, labels) -> loss`` per batch, replaying a graph of it for full-size batches.

    ``step`` must read its batch only from the tensors it is given and return the loss tensor it
    computed; ``name`` names the loss in the error if it cannot be graphed. ``check_host_reads``:
    whether the last warm-up turns host synchronisations into errors (torch's switch for it is
    process-wide, so beside other trainer threads it would fail their legitimate reads). With
    ``every_size`` (steps kept across clients, :class:`StepGraphCache`) each smaller batch size
    gets a graph of its own too, in the same stream and memory pool: an epoch's last batch is one
    of at most ``batch_size - 1`` sizes, which recur over a run's clients and rounds.
    """

    def __init__(self, step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch_size: int,
                 make_graph: Callable[[], StepGraph], name: str, every_size: bool = False,
                 check_host_reads: bool = True) -> None:
        self.step, self.batch_size, self.name, self.every_size = step, batch_size, name, every_size
        self.check_host_reads = check_host_reads
        self.graph = make_graph()
        self.by_size: dict[int, _SizeGraph] = {batch_size: _SizeGraph(self.graph)}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        size = images.shape[0]
        entry = self.by_size.get(size)
        if entry is None:
            if not self.every_size:
                return self.step(images, labels)
            entry = self.by_size[size] = _SizeGraph(self.graph.sibling())
        entry.seen += 1
        if entry.images is not None:
            entry.images.copy_(images)
            entry.labels.copy_(labels)
            entry.graph.replay()
            return entry.loss
        if entry.seen <= WARMUP_STEPS:
            return self._warm_up(entry, images, labels)
        self._capture(entry, images.clone(), labels.clone())
        entry.graph.replay()  # capturing recorded the step without running it
        return entry.loss

    def _warm_up(self, entry: _SizeGraph, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # The first step may fill caches from the host (a class mask, say); a size's last warm-up
        # is the step its graph will record, so there a host synchronisation is an error.
        try:
            with entry.graph.warmup(strict=entry.seen == WARMUP_STEPS and self.check_host_reads):
                return self.step(images, labels)
        except RuntimeError as exc:
            if HOST_SYNC_ERROR not in str(exc):
                raise
            raise PluginError(
                f"{self.name} is marked graph_safe but a step of it reads a value back to the host "
                f"({_first_cause(exc)}), which a CUDA graph cannot replay; remove @graph_safe from it "
                "or run with --no-cuda-graphs"
            ) from exc

    def _capture(self, entry: _SizeGraph, images: torch.Tensor, labels: torch.Tensor) -> None:
        def recorded() -> None:
            entry.loss = self.step(images, labels)

        try:
            entry.graph.capture(recorded)
        except RuntimeError as exc:
            raise RuntimeError(
                f"capturing a local step of {self.name} as a CUDA graph failed ({_first_cause(exc)}); "
                "run with --no-cuda-graphs"
            ) from exc
        entry.images, entry.labels = images, labels

    @property
    def captured_sizes(self) -> list[int]:
        return sorted(size for size, entry in self.by_size.items() if entry.images is not None)


@dataclass
class CachedStep:
    """A captured step and what it was captured over."""

    settings: tuple
    tensors: list[torch.Tensor]
    steps: GraphedSteps
    optimizer: Restartable


class Restartable(Protocol):
    """An optimizer whose state can start over in place (:meth:`LocalSGD.restart`)."""

    def restart(self) -> None: ...


class StepGraphCache:
    """Makes a run's step graphs and keeps those whose loss is :func:`graph_reusable`, for the next
    local training of the same model: one capture serves every client that trains it, instead of
    two eager warm-up steps and a capture per client. One kept step per model (DepthFL trains one
    model per depth, clients of every depth in a round), at most :attr:`MODELS`; a model trained
    with other settings (an lr schedule's next round) replaces its own.

    Every graph it makes is a sibling of one root (:meth:`StepGraph.sibling`): one stream and one
    memory pool for the run's trainer. Its graphs replay one after another and none reads what
    another left in the pool, so a graph dropped after its client (a loss made per client) leaves
    its memory to the next capture instead of to a pool of its own that the allocator would keep
    until memory ran out, and each kept model's graphs cost only their static inputs."""

    MODELS = 8

    def __init__(self, make_graph: Callable[[], StepGraph], check_host_reads: bool = True) -> None:
        self.make_graph = make_graph
        self.check_host_reads = check_host_reads  # False where trainer threads share the process
        self.kept: list[CachedStep] = []  # most recently used last
        self._root: StepGraph | None = None  # holds the stream and pool; never captured itself

    def __call__(self) -> StepGraph:
        if self._root is None:
            self._root = self.make_graph()
        return self._root.sibling()

    def find(self, settings: tuple, tensors: list[torch.Tensor]) -> CachedStep | None:
        """The kept step, if one was captured with these settings over these very tensors (the
        graph reads their memory: a replaced parameter or buffer needs a new capture)."""
        for entry in self.kept:
            if _same_tensors(entry.tensors, tensors):
                if entry.settings != settings:
                    return None
                self.kept.remove(entry)
                self.kept.append(entry)
                return entry
        return None

    def keep(self, entry: CachedStep) -> None:
        """Keep ``entry``, in place of the step kept for the same model, else of the least recently used."""
        self.kept = [e for e in self.kept if not _same_tensors(e.tensors, entry.tensors)]
        self.kept.append(entry)
        del self.kept[:-self.MODELS]


def _same_tensors(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))
