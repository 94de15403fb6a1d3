"""Training-step throughput of every registered model (images/s, batch 64, 2 CPU threads).

One step = forward, cross-entropy, backward and an SGD update (momentum 0.9,
weight decay 5e-4) on a random batch; the first step is a warm-up. ViT is also
measured at its Mini-ImageNet size.

    python benchmarks/bench_models.py                              # prints the table
    pytest benchmarks/bench_models.py --benchmark-only             # pytest-benchmark
"""

from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F

from fedbench.models import build_model

BATCH = 64
THREADS = 2
CASES = [
    ("cnn", (1, 28, 28)),
    ("cnn", (3, 32, 32)),
    ("resnet18", (3, 32, 32)),
    ("resnet34", (3, 32, 32)),
    ("vgg11_bn", (3, 32, 32)),
    ("squeezenet", (3, 32, 32)),
    ("squeezenet_nopool", (3, 32, 32)),
    ("vit", (3, 32, 32)),
    ("vit", (3, 84, 84)),
]


def make_step(name: str, shape: tuple[int, int, int], num_classes: int = 10, width: float = 1.0):
    """A closure running one SGD training step of ``name`` on a fixed random batch."""
    torch.manual_seed(0)
    model = build_model(name, shape, num_classes, width=width).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = torch.randn(BATCH, *shape), torch.randint(0, num_classes, (BATCH,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()  # warm-up: allocator, momentum buffers, kernel selection
    return step


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_training_step_throughput(benchmark, name, shape):
    torch.set_num_threads(THREADS)
    step = make_step(name, shape)
    benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = BATCH / benchmark.stats.stats.mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {THREADS} threads, batch {BATCH}, median of {args.steps} steps")
    print("| model | input | step (s) | images/s |\n|---|---|---:|---:|")
    for name, shape in CASES:
        step = make_step(name, shape)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        median = sorted(times)[len(times) // 2]
        print(f"| {name} | {'×'.join(map(str, shape))} | {median:.3f} | {BATCH / median:.0f} |", flush=True)


if __name__ == "__main__":
    main()
