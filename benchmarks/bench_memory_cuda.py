"""Memory model vs a real allocator: CPU profiler always, CUDA ``max_memory_allocated`` when a GPU exists.

    python benchmarks/bench_memory_cuda.py            # Markdown table on stdout

Each row: one full-model training step (SGD momentum 0.9, wd 5e-4, steady state) at
the given batch; the model's prediction uses the same optimizer path as the
reference (per-tensor on CPU, torch's default multi-tensor ``foreach`` on CUDA).
CUDA rows are skipped without a CUDA device.
"""

from __future__ import annotations

import torch

from fedbench.memory import SGDSpec, peak_training_bytes
from fedbench.memory_validation import cuda_peak_bytes, profiled_peak_bytes
from fedbench.models import build_model

CASES = [
    ("cnn", (1, 28, 28), 16), ("cnn", (1, 28, 28), 64),
    ("resnet18", (3, 32, 32), 16), ("resnet18", (3, 32, 32), 64),
    ("vgg11_bn", (3, 32, 32), 64), ("resnet34", (3, 32, 32), 64),
]


def main() -> None:
    print("| model | batch | reference | measured bytes | memory model bytes | error |")
    print("|---|---|---|---|---|---|")
    for arch, shape, batch in CASES:
        rows = []
        torch.manual_seed(0)
        if arch in ("cnn", "resnet18"):
            predicted = peak_training_bytes(build_model(arch, shape, 10), batch_size=batch).peak_bytes
            rows.append(("CPU profiler", profiled_peak_bytes(build_model(arch, shape, 10), batch_size=batch), predicted))
        if torch.cuda.is_available():
            predicted = peak_training_bytes(
                build_model(arch, shape, 10), batch_size=batch, optimizer=SGDSpec(foreach=True)
            ).peak_bytes
            rows.append(("CUDA max_memory_allocated",
                         cuda_peak_bytes(build_model(arch, shape, 10), batch_size=batch), predicted))
        for reference, measured, predicted in rows:
            error = 100 * (predicted - measured) / measured
            print(f"| {arch} | {batch} | {reference} | {measured:,} | {predicted:,} | {error:+.2f} % |")


if __name__ == "__main__":
    main()
