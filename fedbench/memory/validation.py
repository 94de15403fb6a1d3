"""Real measurements of one local step, to validate the memory model against.

Two references, both measuring the same quantity as :mod:`fedbench.memory.model`
(peak bytes of one steady-state step, resident model and optimizer state
included, input batch excluded):

* CPU: ``torch.profiler`` with ``profile_memory=True`` and its memory timeline
  (deprecated for CUDA use, still correct on CPU in torch 2.14), maximum of the
  summed categories;
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``.

Both run real arithmetic on random data, so they are for tests and benchmarks,
not for the engine.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedbench.memory.model import OptimizerFactory, SGDSpec
from fedbench.training.loop import LossFn, cross_entropy_loss


def _prepared_step(
    model: nn.Module,
    trainable: Iterable[str] | None,
    batch_size: int,
    input_shape: tuple[int, ...] | None,
    num_classes: int | None,
    optimizer: OptimizerFactory,
    loss_fn: LossFn,
    device: torch.device,
):
    """Freeze, warm up (so optimizer state exists); returns ``(step, batch bytes, optimizer state)``.
    ``input_shape`` and ``num_classes`` default to the model's own."""
    input_shape = tuple(input_shape or model.input_shape)
    num_classes = int(num_classes or model.num_classes)
    chosen = None if trainable is None else set(trainable)
    model.to(device).train()
    for name, param in model.named_parameters():
        param.requires_grad_(chosen is None or name in chosen)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optimizer(params)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch_size, *input_shape), generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, images, labels).backward()
        opt.step()

    step()
    opt.zero_grad(set_to_none=True)
    batch_bytes = images.untyped_storage().nbytes() + labels.untyped_storage().nbytes()
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    return step, batch_bytes, state


def _resident_bytes(model: nn.Module, optimizer_state: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages of parameters, buffers and optimizer state."""
    storages = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in (*model.parameters(), *model.buffers(), *optimizer_state)
    }
    return sum(storages.values())


def profiled_peak_bytes(
    model: nn.Module,
    trainable: Iterable[str] | None = None,
    batch_size: int = 64,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    optimizer: OptimizerFactory = SGDSpec(),
    loss_fn: LossFn = cross_entropy_loss,
) -> int:
    """Peak bytes of one real CPU step from the profiler's memory timeline (trains ``model`` in place)."""
    from torch.profiler import ProfilerActivity, profile

    step, batch_bytes, _state = _prepared_step(
        model, trainable, batch_size, input_shape, num_classes, optimizer, loss_fn, torch.device("cpu"),
    )
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(folder) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _times, sizes = json.loads(path.read_text())
    return max(sum(row) for row in sizes) - batch_bytes


def cuda_peak_bytes(
    model: nn.Module,
    trainable: Iterable[str] | None = None,
    batch_size: int = 64,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    optimizer: OptimizerFactory = SGDSpec(foreach=True),
    loss_fn: LossFn = cross_entropy_loss,
) -> int:
    """Peak bytes of one real CUDA step from the caching allocator (needs a CUDA device)."""
    device = torch.device("cuda")
    step, _batch_bytes, optimizer_state = _prepared_step(
        model, trainable, batch_size, input_shape, num_classes, optimizer, loss_fn, device,
    )
    # Library workspaces (cuBLAS, cuDNN) allocated in the warm-up stay allocated; count only
    # the rise above the state before the step, plus the resident model and optimizer state.
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated()) - before + _resident_bytes(model, optimizer_state)


# ----------------------------------------------------------- attributing CUDA's excess
ALLOCATOR_FRAMES = ("c10::cuda::CUDACachingAllocator", "CUDACachingAllocator", "c10::", "_record_memory_history",
                    "torch::unwind", "torch::CapturedTraceback")


def live_at_peak(events: list[dict[str, Any]]) -> tuple[int, list[dict[str, Any]]]:
    """Replay a CUDA allocator trace (``torch.cuda.memory._snapshot()["device_traces"][i]``): the
    highest sum of live allocations and the ``alloc`` events live at that moment, largest first.
    An allocation ends at ``free_requested`` (when the tensor dies), as ``memory_allocated`` counts."""
    live: dict[int, dict[str, Any]] = {}
    total = peak = 0
    at_peak: list[dict[str, Any]] = []
    for event in events:
        action = event.get("action")
        if action == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > peak:
                peak, at_peak = total, list(live.values())
        elif action == "free_requested" and event["addr"] in live:
            total -= live.pop(event["addr"])["size"]
    return peak, sorted(at_peak, key=lambda e: -e["size"])


def where_allocated(event: dict[str, Any], depth: int = 3) -> str:
    """The innermost frames of an allocation outside the allocator itself, innermost first."""
    names = [f.get("name", "?") for f in event.get("frames", [])]
    useful = [n for n in names if not any(n.startswith(prefix) for prefix in ALLOCATOR_FRAMES)]
    return " < ".join(useful[:depth]) or "(no frames)"


# Functions that allocate a library's scratch space (not a tensor) through torch's allocator.
WORKSPACE_ALLOCATORS = ("at::native::run_conv_plan", "workspace")


def is_library_workspace(event: dict[str, Any]) -> bool:
    """Whether an allocation is a library's scratch space: its innermost frame outside the
    allocator is one that requests a workspace (cuDNN's execution-plan runner), not an op that
    creates an output tensor (whose frames may also name cuDNN)."""
    innermost = where_allocated(event, depth=1).lower()
    return any(name.lower() in innermost for name in WORKSPACE_ALLOCATORS)


def cuda_step_allocations(
    model: nn.Module,
    trainable: Iterable[str] | None = None,
    batch_size: int = 64,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    optimizer: OptimizerFactory = SGDSpec(foreach=True),
    loss_fn: LossFn = cross_entropy_loss,
) -> tuple[int, list[dict[str, Any]]]:
    """:func:`live_at_peak` of one steady-state CUDA step, with C++ and Python frames recorded
    for every allocation (needs a CUDA device), to name what CUDA holds beyond the memory model."""
    step, _batch_bytes, _state = _prepared_step(
        model, trainable, batch_size, input_shape, num_classes, optimizer, loss_fn, torch.device("cuda"),
    )
    torch.cuda.synchronize()
    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="all", max_entries=200_000)
    try:
        step()
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    events = snapshot["device_traces"][torch.cuda.current_device()]
    return live_at_peak(events)
