"""The memory model: exact on toy cases, close to a real allocator, frozen parameters free, golden peaks."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedbench.errors import ConfigError
from fedbench.memory.model import MemoryModel, SGDSpec, peak_training_bytes
from fedbench.memory.validation import profiled_peak_bytes
from fedbench.models import build_model
from fedbench.training.sgd import LocalSGD

GOLDEN = Path(__file__).parent / "golden" / "memory_peaks.csv"
FMNIST, CIFAR = (1, 28, 28), (3, 32, 32)


def block_names(model: nn.Module, k: int) -> list[str]:
    """Parameter names of block k (0-based), the trainable set of a progressive stage."""
    return [n for n, _ in model.named_parameters() if n.startswith(f"blocks.{k}.")]


def head_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith("head.")]


def test_a_linear_layer_step_counts_weights_grads_momentum_and_activations_exactly():
    model = nn.Linear(10, 4, bias=False)
    report = peak_training_bytes(model, batch_size=8, input_shape=(10,), num_classes=4)
    weight_bytes = 10 * 4 * 4
    assert report.params_bytes == weight_bytes
    assert report.optimizer_bytes == weight_bytes
    assert report.peak_bytes == (
        report.params_bytes + report.grads_bytes + report.optimizer_bytes + report.activations_bytes
    )
    assert report.trainable_params == report.total_params == 40


def test_frozen_parameters_cost_no_gradient_or_optimizer_memory():
    model = build_model("cnn", FMNIST, 10)
    full = peak_training_bytes(model, batch_size=32)
    head = head_names(model)
    frozen = peak_training_bytes(model, head, batch_size=32)
    head_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if n in head)
    assert frozen.optimizer_bytes == head_bytes  # one momentum buffer per trainable tensor only
    assert frozen.grads_bytes <= head_bytes
    assert frozen.params_bytes == full.params_bytes  # frozen weights are still resident
    assert frozen.trainable_params < full.trainable_params
    assert frozen.peak_bytes < full.peak_bytes


def test_nothing_trainable_still_counts_the_forward_pass():
    model = build_model("cnn", FMNIST, 10)
    report = peak_training_bytes(model, [], batch_size=16)
    assert report.grads_bytes == report.optimizer_bytes == 0
    assert report.activations_bytes > 0


class WithProjection(nn.Module):
    """A model plus a projection head that only the loss uses (like NeuLite's MLP)."""

    def __init__(self, net: nn.Module, hidden: int) -> None:
        super().__init__()
        self.net, self.projection = net, nn.Linear(10, hidden)


def loss_with_projection_and_kernel(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model.net(images)
    z = model.projection(logits)
    kernel = z @ z.T  # a B×B kernel matrix, like nHSIC's
    return F.cross_entropy(logits, labels) + 1e-6 * kernel.mean()


def test_parameters_and_tensors_a_method_adds_in_its_loss_are_counted():
    net = build_model("cnn", FMNIST, 10)
    plain = peak_training_bytes(net, batch_size=64)
    wrapped = WithProjection(net, hidden=4096)
    extra = peak_training_bytes(
        wrapped, batch_size=64, input_shape=FMNIST, num_classes=10, loss_fn=loss_with_projection_and_kernel
    )
    projection_bytes = sum(p.numel() * 4 for p in wrapped.projection.parameters())
    assert extra.params_bytes == plain.params_bytes + projection_bytes
    assert extra.optimizer_bytes == plain.optimizer_bytes + projection_bytes
    assert extra.peak_bytes >= plain.peak_bytes + 2 * projection_bytes  # weights + momentum, always resident


def test_the_cache_answers_a_repeated_question_without_recomputing():
    memory = MemoryModel()
    model = build_model("cnn", FMNIST, 10)
    first = memory.report(model, batch_size=16)
    assert memory.report(build_model("cnn", FMNIST, 10), batch_size=16) is first
    assert memory.report(model, head_names(model), batch_size=16) is not first


def test_batch_size_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match=r"batch size \(0\) must be >= 1"):
        peak_training_bytes(build_model("cnn", FMNIST, 10), batch_size=0)


def test_an_input_shape_the_model_cannot_take_names_the_model_and_the_shape():
    with pytest.raises(ConfigError, match=r"model 'cnn' cannot take inputs of shape \(1, 40, 40\)") as info:
        peak_training_bytes(build_model("cnn", FMNIST, 10), batch_size=4, input_shape=(1, 40, 40))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("arch", "shape", "width", "batch_size"),
    [("cnn", FMNIST, 1.0, 16), ("cnn", FMNIST, 1.0, 64), ("resnet18", (3, 16, 16), 0.25, 8), ("resnet18", (3, 16, 16), 0.25, 32)],
)
def test_memory_model_is_within_5_percent_of_the_cpu_profiler(arch, shape, width, batch_size):
    torch.manual_seed(0)
    model = build_model(arch, shape, 10, width=width)
    predicted = peak_training_bytes(model, batch_size=batch_size).peak_bytes
    measured = profiled_peak_bytes(model, batch_size=batch_size)
    assert abs(predicted - measured) / measured < 0.05


def test_every_stage_of_resnet18_is_reported_in_under_two_seconds():
    model = build_model("resnet18", CIFAR, 10)
    peak_training_bytes(model, batch_size=2)  # the one-time warm-up of torch's meta kernels
    memory = MemoryModel()
    start = time.perf_counter()
    memory.report(model, batch_size=64)
    for k in range(model.num_blocks):
        memory.report(model, block_names(model, k), batch_size=64)
    assert time.perf_counter() - start < 2.0


def golden_rows() -> list[dict[str, str]]:
    """Peaks of the cnn and a narrow ResNet18: full model, each block alone, and the head alone."""
    rows = []
    for arch, shape, width in [("cnn", FMNIST, 1.0), ("resnet18", CIFAR, 0.25)]:
        model = build_model(arch, shape, 10, width=width)
        slices = {"full": None, "head": head_names(model)}
        slices.update({f"block{k}": block_names(model, k) for k in range(model.num_blocks)})
        for batch_size in (16, 64):
            for name, trainable in slices.items():
                r = peak_training_bytes(model, trainable, batch_size=batch_size, optimizer=SGDSpec())
                rows.append({
                    "model": arch, "width": str(width), "shape": "x".join(map(str, shape)),
                    "batch": str(batch_size), "trainable": name, "peak_bytes": str(r.peak_bytes),
                    "params_bytes": str(r.params_bytes), "grads_bytes": str(r.grads_bytes),
                    "optimizer_bytes": str(r.optimizer_bytes), "activations_bytes": str(r.activations_bytes),
                })
    return rows


def test_peak_bytes_match_the_golden_file():
    rows = golden_rows()
    if os.environ.get("FEDBENCH_ACCEPT") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        with GOLDEN.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; create it with FEDBENCH_ACCEPT=1 python -m pytest tests/test_memory.py")
    with GOLDEN.open(newline="") as handle:
        expected = list(csv.DictReader(handle))
    assert rows == expected, "peaks changed; if intended: FEDBENCH_ACCEPT=1 python -m pytest tests/test_memory.py"


def test_memory_models_share_one_process_wide_cache():
    first = MemoryModel().report(build_model("cnn", FMNIST, 10), batch_size=12)
    assert MemoryModel().report(build_model("cnn", FMNIST, 10), batch_size=12) is first
    assert MemoryModel(SGDSpec(momentum=0.0)).report(build_model("cnn", FMNIST, 10), batch_size=12) is not first


def test_live_at_peak_replays_an_allocator_trace_and_names_where_memory_was_allocated():
    """The CUDA attribution step (benchmarks/bench_memory_cuda.py --explain) on a hand-made trace."""
    from fedbench.memory.validation import is_library_workspace, live_at_peak, where_allocated

    def alloc(addr, size, *names):
        return {"action": "alloc", "addr": addr, "size": size,
                "frames": [{"name": "c10::cuda::CUDACachingAllocator::malloc"}, *({"name": n} for n in names)]}

    trace = [
        alloc(1, 100, "at::native::empty_cuda", "forward"),
        alloc(2, 50, "at::native::cudnn_convolution_backward_weight", "backward"),
        {"action": "free_requested", "addr": 2, "size": 50},
        {"action": "free_completed", "addr": 2, "size": 50},
        alloc(3, 70, "at::native::cudnn_convolution_backward_input", "backward"),
        alloc(4, 10, "at::native::add", "step"),
        alloc(5, 40, "at::native::run_conv_plan", "at::native::cudnn_convolution_backward_input"),
        {"action": "free_requested", "addr": 5, "size": 40},
        {"action": "free_requested", "addr": 3, "size": 70},
        {"action": "segment_alloc", "addr": 9, "size": 2 << 20},
    ]
    peak, live = live_at_peak(trace)
    assert peak == 220
    assert [e["addr"] for e in live] == [1, 3, 5, 4]  # largest first
    assert [is_library_workspace(e) for e in live] == [False, False, True, False]
    assert where_allocated(live[1], depth=1) == "at::native::cudnn_convolution_backward_input"
    assert where_allocated({"frames": []}) == "(no frames)"


def test_a_meta_model_is_traced_in_place_and_put_back_as_it_was():
    """Models already on meta are lent to the trace rather than deep-copied; nothing of the
    trace (gradient flags, gradients, training mode) may stay behind, and the answer is the
    one the copy of a real model gives."""
    real = build_model("cnn", (1, 28, 28), 10, width=0.5)
    with torch.device("meta"):
        lent = build_model("cnn", (1, 28, 28), 10, width=0.5)
    lent.eval()
    first = next(lent.parameters())
    first.requires_grad_(False)
    flags = [p.requires_grad for p in lent.parameters()]
    trainable = [name for name, _ in real.named_parameters()][2:]
    assert peak_training_bytes(lent, trainable, batch_size=8) == peak_training_bytes(real, trainable, batch_size=8)
    assert [p.requires_grad for p in lent.parameters()] == flags
    assert all(p.grad is None for p in lent.parameters())
    assert not any(m.training for m in lent.modules())


@pytest.mark.parametrize("foreach", [False, True])
def test_allocated_sgd_state_gives_the_report_of_a_warm_up_step(foreach):
    """LocalSGD creates its momentum buffers without a step for the memory model; any other
    optimizer (here torch's own SGD) gets a real warm-up update: both steady states are equal."""
    model = build_model("resnet18", (3, 32, 32), 10, width=0.25)
    spec = SGDSpec(foreach=foreach)

    def torch_sgd(params):
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               foreach=foreach)

    trainable = [name for name, _ in model.named_parameters()][4:]
    assert peak_training_bytes(model, trainable, batch_size=8, optimizer=spec) == peak_training_bytes(
        model, trainable, batch_size=8, optimizer=torch_sgd)


@pytest.mark.parametrize("arch,momentum,weight_decay", [
    ("resnet18", 0.9, 5e-4), ("resnet18", 0.0, 5e-4), ("resnet18", 0.9, 0.0), ("vit", 0.9, 5e-4),
    ("squeezenet", 0.0, 0.0),
])
def test_the_sgd_update_stated_by_local_sgd_gives_the_report_of_tracing_it(arch, momentum, weight_decay, monkeypatch):
    """LocalSGD states the per-tensor update's temporaries instead of letting the memory model trace
    four ops per parameter; the reports must be those of the traced update (frozen blocks too)."""
    shape = (3, 84, 84) if arch == "vit" else CIFAR
    model = build_model(arch, shape, 10, width=0.25)
    spec = SGDSpec(momentum=momentum, weight_decay=weight_decay)
    cases = [dict(batch_size=8), dict(batch_size=4, trainable=[n for n, _ in model.named_parameters()][6:])]
    stated = [peak_training_bytes(model, optimizer=spec, **case) for case in cases]
    monkeypatch.setattr(LocalSGD, "update_temporaries", lambda self: None)
    traced = [peak_training_bytes(model, optimizer=spec, **case) for case in cases]
    assert stated == traced


def test_local_sgd_states_no_temporaries_where_the_update_is_not_per_tensor():
    params = [nn.Parameter(torch.empty(3, 2, device="meta")), nn.Parameter(torch.empty(5, device="meta"))]
    for p in params:
        p.grad = torch.empty_like(p)
    per_tensor = LocalSGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)
    assert per_tensor.update_temporaries() is None  # first step: it still creates the momentum buffers
    per_tensor.allocate_state()
    assert per_tensor.update_temporaries() == [24, 20]
    assert LocalSGD(params, lr=0.1, momentum=0.9, foreach=False).update_temporaries() is None
    no_decay = LocalSGD(params, lr=0.1, foreach=False)
    assert no_decay.update_temporaries() == []
    multi_tensor = LocalSGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)
    multi_tensor.allocate_state()
    assert multi_tensor.update_temporaries() is None  # its temporaries are alive together: traced
