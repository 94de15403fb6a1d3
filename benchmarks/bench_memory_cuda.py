"""Memory model vs a real allocator: CUDA ``max_memory_allocated`` when a GPU exists, CPU profiler on request.

    python benchmarks/bench_memory_cuda.py                         # Markdown table on stdout
    python benchmarks/bench_memory_cuda.py --json out.json --cpu   # also the CPU profiler, and JSON rows
    python benchmarks/bench_memory_cuda.py --per-tensor            # also CUDA with CPU's per-tensor SGD

Each row is one workload a method trains (``Method.workloads``: FedAvg's full model,
NeuLite's stages with their frozen prefix and curriculum loss, DepthFL's exit models
with distillation, HeteroFL's width levels, ProgFed's growing prefixes) at one batch
size: one steady-state training step (SGD momentum 0.9, wd 5e-4) measured on the
device, next to :class:`fedbench.memory.model.MemoryModel`'s prediction for the same
optimizer path (per-tensor on CPU, torch's default multi-tensor ``foreach`` on CUDA).
Both count the resident model and optimizer state and exclude the input batch.
Library workspaces (cuDNN's convolution scratch) are allocated through torch's caching
allocator during the step, so CUDA rows include them; the memory model does not know
them (they depend on the algorithm cuDNN picks). Without a CUDA device, CUDA rows are
skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from fedbench import registry
from fedbench.core.method import Workload, validate_method
from fedbench.memory.model import MemoryModel, SGDSpec
from fedbench.memory.validation import (
    cuda_peak_bytes,
    cuda_step_allocations,
    is_library_workspace,
    profiled_peak_bytes,
    where_allocated,
)
from fedbench.models import build_model
from fedbench.reports.memory_table import KNOWN_SHAPES
from fedbench.training.loop import cross_entropy_loss

DATASET_OF_MODEL = {"cnn": "fashion-mnist"}  # every other model: CIFAR-10 inputs, as in the paper
MIB = 1024 * 1024


def workloads(arch: str, method: str) -> tuple[tuple[int, ...], int, list[Workload]]:
    """The method's workloads (default options) on a real, seeded ``arch``; FedAvg's is the full model."""
    shape, num_classes = KNOWN_SHAPES[DATASET_OF_MODEL.get(arch, "cifar10")]
    torch.manual_seed(0)
    model = build_model(arch, shape, num_classes)
    method_cls = registry.load("methods", method, validate=validate_method)
    found = list(method_cls.workloads(model, method_cls.parse_options({})))
    return shape, num_classes, found or [Workload("full", model)]


def materialized(model: torch.nn.Module) -> torch.nn.Module:
    """A copy with real storage: workloads a method declares on the meta device (HeteroFL's width
    levels) get small random weights, which is all a memory measurement needs."""
    model = copy.deepcopy(model)
    if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return model
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            if name.endswith("running_var"):
                tensor.fill_(1.0)
            elif tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.1 - 0.05)
            else:
                tensor.zero_()
    return model


def measure(arch: str, method: str, batch: int, cpu: bool, per_tensor: bool = False) -> list[dict]:
    shape, num_classes, found = workloads(arch, method)
    rows = []
    on_cuda = torch.cuda.is_available()
    for work in found:
        loss_fn = work.loss_fn or cross_entropy_loss
        for reference, optimizer, run in (
            ("cuda", SGDSpec(foreach=True), cuda_peak_bytes if on_cuda else None),
            # CUDA with the per-tensor update a CPU run uses, whose temporaries LocalSGD states
            ("cuda-per-tensor", SGDSpec(foreach=False), cuda_peak_bytes if on_cuda and per_tensor else None),
            ("cpu", SGDSpec(), profiled_peak_bytes if cpu else None),
        ):
            if run is None:
                continue
            report = MemoryModel(optimizer).report(work.model, work.trainable, batch, shape, loss_fn=loss_fn)
            start = time.perf_counter()
            measured = run(materialized(work.model), work.trainable, batch, shape, num_classes, optimizer, loss_fn)
            rows.append({
                "model": arch, "method": method, "workload": work.name, "batch": batch, "reference": reference,
                "measured_bytes": int(measured), "predicted_bytes": int(report.peak_bytes),
                "error_pct": 100.0 * (report.peak_bytes - measured) / measured,
                "params_bytes": report.params_bytes, "grads_bytes": report.grads_bytes,
                "optimizer_bytes": report.optimizer_bytes, "activations_bytes": report.activations_bytes,
                "measure_s": time.perf_counter() - start,
            })
            if reference.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,cnn,resnet34,vgg11_bn,squeezenet")
    parser.add_argument("--methods", default="fedavg,neulite,depthfl,heterofl,progfed")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--cpu", action="store_true", help="also measure on CPU with torch.profiler (slow)")
    parser.add_argument("--per-tensor", action="store_true",
                        help="also CUDA rows with the per-tensor SGD update (CPU's path) instead of foreach")
    parser.add_argument("--json", type=Path, help="write the rows (and the environment) here")
    parser.add_argument("--explain", type=int, default=0, metavar="K",
                        help="for the K CUDA rows CUDA exceeds most, list what is live at its peak and where "
                             "it was allocated (torch's allocator history with C++ frames)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu:
        print("no CUDA device: nothing to measure (add --cpu for the CPU profiler rows)", file=sys.stderr)
        return 1
    environment = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    print(f"<!-- {json.dumps(environment)} -->")
    print("| model | method | workload | batch | reference | measured MiB | memory model MiB | error |")
    print("|---|---|---|---|---|---|---|---|")
    rows: list[dict] = []
    for arch in args.models.split(","):
        for method in args.methods.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                try:
                    found = measure(arch, method, batch, args.cpu, args.per_tensor)
                except Exception as exc:  # one combination that cannot be built must not end the table
                    print(f"| {arch} | {method} | – | {batch} | – | – | – | {type(exc).__name__}: {exc} |")
                    continue
                for row in found:
                    rows.append(row)
                    print(f"| {arch} | {method} | {row['workload']} | {batch} | {row['reference']} "
                          f"| {row['measured_bytes'] / MIB:.1f} | {row['predicted_bytes'] / MIB:.1f} "
                          f"| {row['error_pct']:+.2f} % |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"environment": environment, "rows": rows}, indent=1))
    worst = max((abs(r["error_pct"]) for r in rows), default=0.0)
    print(f"\n{len(rows)} rows; largest |error| {worst:.2f} %")
    cuda_rows = [r for r in rows if r["reference"] == "cuda"]
    for row in sorted(cuda_rows, key=lambda r: r["predicted_bytes"] - r["measured_bytes"])[: args.explain]:
        explain(row)
    return 0


def explain(row: dict) -> None:
    """What CUDA holds at the peak of one row's step, largest allocations first, with where each
    was allocated, and how much of it is library scratch (cuDNN's convolution workspace)."""
    shape, num_classes, found = workloads(row["model"], row["method"])
    work = next(w for w in found if w.name == row["workload"])
    peak, live = cuda_step_allocations(
        materialized(work.model), work.trainable, row["batch"], shape, num_classes, SGDSpec(foreach=True),
        work.loss_fn or cross_entropy_loss,
    )
    library = sum(e["size"] for e in live if is_library_workspace(e))
    print(f"\n### {row['model']} {row['method']} {row['workload']} batch {row['batch']}: measured "
          f"{row['measured_bytes'] / MIB:.1f} MiB, memory model {row['predicted_bytes'] / MIB:.1f} MiB; "
          f"step trace peak {peak / MIB:.1f} MiB above the state before it, of which library "
          f"workspace {library / MIB:.1f} MiB")
    for event in live[:12]:
        print(f"  {event['size'] / MIB:9.2f} MiB  {where_allocated(event)}")
    torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
