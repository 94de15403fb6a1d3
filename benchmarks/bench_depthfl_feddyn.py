"""One DepthFL local step against FedAvg's: aten ops and time, FedDyn per tensor vs fused.

A step is what the local loop runs per batch: zero_grad, the loss, backward and the SGD update
(lr 0.01, momentum 0.9, weight decay 5e-4) on a fixed random batch. Rows:

* ``fedavg``: the ResNet alone under cross-entropy;
* ``depthfl-nofeddyn``: the full-depth exit model under DepthFL's loss with FedDyn off (exits and
  distillation only, the distillation over the stacked exits as local training runs it);
* ``depthfl-reference``: FedDyn added tensor by tensor and the distillation pair by pair (what
  the memory model traces);
* ``depthfl-fused``: FedDyn as one autograd node over flat vectors (what local training runs).

``ops`` counts every aten op of one step in ``torch.profiler``; ``kernels`` leaves out views and
other metadata ops. ``fwd+bwd leaves`` counts, in the loss and backward alone, the non-metadata ops
that call no other: about the kernels a GPU launches for them (the SGD update is a few multi-tensor
kernels there, where the CPU runs it tensor by tensor). Times are over interleaved repetitions (each
variant once per round), so a busy machine slows every row alike; the minimum is the least disturbed.

A second table times evaluation's forward pass alone (``--eval-batch`` images, no gradients) of
ResNet and of the full exit model: at a large batch launches do not count, so its ratio says
whether the exit heads' kernels cost in proportion to their arithmetic; ``--profile-forward FILE``
writes the operators of one such pass of the exit model by device time. ``--channels-last`` builds
the ResNet (the trunk) in the channels-last layout and leaves the exits' weights NCHW, as a run
with ``channels_last`` does.

    python benchmarks/bench_depthfl_feddyn.py                          # ResNet18 w0.25, 1x28x28, batch 64
    python benchmarks/bench_depthfl_feddyn.py --threads 1 --reps 40
    python benchmarks/bench_depthfl_feddyn.py --device cuda            # where a GPU exists
    python benchmarks/bench_depthfl_feddyn.py --device cuda --width 1.0 --channels-last
    pytest benchmarks/bench_depthfl_feddyn.py --benchmark-only         # pytest-benchmark
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from fedbench.methods.depthfl import DepthFLLocal, DepthFLLoss, offered_depths
from fedbench.models import build_model
from fedbench.models.cutting import ExitModel, exit_heads
from fedbench.training.loop import cross_entropy_loss
from fedbench.training.sgd import LocalSGD

VARIANTS = ("fedavg", "depthfl-nofeddyn", "depthfl-reference", "depthfl-fused")
METADATA_OPS = frozenset({
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::slice", "aten::narrow",
    "aten::split", "aten::split_with_sizes", "aten::view_as", "aten::alias", "aten::detach", "aten::expand",
    "aten::result_type",
})
LEAF_METADATA_OPS = METADATA_OPS | {
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_", "aten::as_strided_", "aten::t",
    "aten::transpose", "aten::unsqueeze", "aten::squeeze", "aten::permute", "aten::select", "aten::resolve_conj",
    "aten::lift_fresh",
}


def make_steps(
    model_name: str = "resnet18", width: float = 0.25, shape: tuple[int, int, int] = (1, 28, 28),
    batch: int = 64, alpha: float = 0.1, device: str = "cpu", channels_last: bool = False,
) -> tuple[dict[str, Callable[[], None]], int]:
    """One closure per variant, each running one training step; and the exit model's tensor count."""
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10, width=width)
    depths = offered_depths(model, None)
    local = DepthFLLocal(ExitModel(model, exit_heads(model, depths[:-1]), depths[-1]), model, depths[-1], True)
    plain = build_model(model_name, shape, 10, width=width)  # FedAvg's model, its own weights
    if channels_last:  # the trunks only: a run builds its models so and the exits beside them in NCHW
        model.to(memory_format=torch.channels_last)
        plain.to(memory_format=torch.channels_last)
    with torch.no_grad():  # a mid-training state: g_m and θ^t away from zero and from θ
        local.feddyn.g.normal_(std=1e-3)
        local.feddyn.anchor.add_(torch.randn_like(local.feddyn.anchor), alpha=1e-2)
    local.to(device).train()
    plain.to(device).train()
    images = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    setups = {
        "fedavg": (plain, cross_entropy_loss),
        "depthfl-nofeddyn": (local, DepthFLLoss(1.0, 1.0, 0.0, fused=True)),
        "depthfl-reference": (local, DepthFLLoss(1.0, 1.0, alpha)),
        "depthfl-fused": (local, DepthFLLoss(1.0, 1.0, alpha, fused=True)),
    }
    steps = {}
    for name, (net, loss_fn) in setups.items():
        # lr 0: every step sees the same weights, so the variants time the same work each round
        optimizer = LocalSGD(list(net.parameters()), lr=0.0, momentum=0.9, weight_decay=5e-4)

        def step(net=net, loss_fn=loss_fn, optimizer=optimizer) -> None:  # noqa: ANN001
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net, images, labels).backward()
            optimizer.step()

        step()  # warm-up: momentum buffers, allocator, kernel selection
        def loss_and_backward(net=net, loss_fn=loss_fn, optimizer=optimizer) -> None:  # noqa: ANN001
            optimizer.zero_grad(set_to_none=True)  # no aten op: gradients start afresh as in a step
            loss_fn(net, images, labels).backward()

        step.loss_and_backward = loss_and_backward
        steps[name] = step
    return steps, sum(1 for _ in local.net.parameters())


def make_forwards(
    model_name: str = "resnet18", width: float = 0.25, shape: tuple[int, int, int] = (1, 28, 28),
    batch: int = 256, device: str = "cpu", channels_last: bool = False,
) -> dict[str, Callable[[], None]]:
    """Evaluation's forward pass, no gradients, of ResNet (``fedavg``) and of the full exit model
    (``depthfl``: the trunk and every exit, as DepthFL's evaluation runs it)."""
    torch.manual_seed(0)
    model = build_model(model_name, shape, 10, width=width)
    exits = exit_heads(model, offered_depths(model, None)[:-1])
    if channels_last:
        model.to(memory_format=torch.channels_last)
    nets = {"fedavg": model, "depthfl": ExitModel(model, exits, model.num_blocks)}
    images = torch.randn(batch, *shape, device=device)
    forwards = {}
    for name, net in nets.items():
        net.to(device).eval()

        def forward(net=net) -> None:  # noqa: ANN001
            with torch.no_grad():
                net(images)

        forward()  # warm-up: allocator, kernel selection
        forwards[name] = forward
    return forwards


def count_ops(step: Callable[[], None]) -> tuple[int, int]:
    """(aten ops, aten ops that are not views or metadata) of one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    names = collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))
    return names.total(), sum(n for name, n in names.items() if name not in METADATA_OPS)


def count_leaves(run: Callable[[], None]) -> int:
    """Non-metadata aten ops of one call of ``run`` that call no other such op (allocations count
    as metadata here): one per kernel, where a composite op (conv2d → … → the convolution itself)
    counts once."""
    from torch.profiler import ProfilerActivity, profile

    def computes(event) -> bool:  # noqa: ANN001
        return event.name.startswith("aten::") and event.name not in LEAF_METADATA_OPS

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(1 for e in prof.events() if computes(e) and not any(computes(c) for c in e.cpu_children))


def profile_forward(forward: Callable[[], None], path: str) -> None:
    """The operators of one call of ``forward``, by device time where a GPU ran them."""
    from torch.profiler import ProfilerActivity, profile

    gpu = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        forward()
        if gpu:
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_device_time_total" if gpu else "self_cpu_time_total", row_limit=25)
    with open(path, "w", encoding="utf-8") as out:
        out.write(table)


def time_steps(steps: dict[str, Callable[[], None]], reps: int, device: str) -> dict[str, list[float]]:
    """Seconds per step of each variant, the variants interleaved within every repetition."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


@pytest.mark.parametrize("variant", VARIANTS)
def test_depthfl_step(benchmark, variant):
    torch.set_num_threads(2)
    steps, tensors = make_steps()
    benchmark.pedantic(steps[variant], rounds=10, iterations=1, warmup_rounds=1)
    ops, kernels = count_ops(steps[variant])
    benchmark.extra_info.update({"ops": ops, "kernels": kernels, "parameter_tensors": tensors,
                                 "fwd_bwd_leaves": count_leaves(steps[variant].loss_and_backward)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--shape", default="1x28x28", help="input C x H x W (default 1x28x28, Fashion-MNIST)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--reps", type=int, default=20, help="timed steps per variant (default 20)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", action="store_true", help="the ResNet trunks in the channels-last layout")
    parser.add_argument("--eval-batch", type=int, default=256, help="images of the timed forward pass (default 256; 0: none)")
    parser.add_argument("--profile-forward", help="write the operators of one exit-model forward pass to this file")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(n) for n in args.shape.split("x"))
    steps, tensors = make_steps(args.model, args.width, shape, args.batch, device=args.device,
                                channels_last=args.channels_last)
    counts = {name: count_ops(step) for name, step in steps.items()}
    leaves = {name: count_leaves(step.loss_and_backward) for name, step in steps.items()}
    times = time_steps(steps, args.reps, args.device)
    layout = "channels-last" if args.channels_last else "NCHW"
    print(f"{args.model} width {args.width}, input {args.shape}, batch {args.batch}, {args.threads} threads, "
          f"{args.device}, {layout}; DepthFL exit model: {tensors} parameter tensors; {args.reps} steps per variant")
    print("| variant | ops/step | kernels/step | fwd+bwd leaves | min ms | median ms | median × FedAvg |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    base = statistics.median(times["fedavg"])
    rows = []
    for name in steps:
        ops, kernels = counts[name]
        low, mid = min(times[name]), statistics.median(times[name])
        rows.append({"variant": name, "ops": ops, "kernels": kernels, "fwd_bwd_leaves": leaves[name],
                     "min_s": low, "median_s": mid})
        print(f"| {name} | {ops} | {kernels} | {leaves[name]} | {low * 1e3:.1f} | {mid * 1e3:.1f} | {mid / base:.2f} |")
    forward_rows = []
    if args.eval_batch > 0:
        forwards = make_forwards(args.model, args.width, shape, args.eval_batch, args.device, args.channels_last)
        forward_times = time_steps(forwards, max(args.reps // 4, 3), args.device)
        base = statistics.median(forward_times["fedavg"])
        print(f"\n| forward pass, batch {args.eval_batch}, no gradients | min ms | median ms | median × FedAvg |\n"
              "|---|---:|---:|---:|")
        for name, seconds in forward_times.items():
            low, mid = min(seconds), statistics.median(seconds)
            forward_rows.append({"model": name, "min_s": low, "median_s": mid})
            print(f"| {name} | {low * 1e3:.1f} | {mid * 1e3:.1f} | {mid / base:.2f} |")
        if args.profile_forward:
            profile_forward(forwards["depthfl"], args.profile_forward)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"parameter_tensors": tensors, "args": vars(args), "rows": rows, "forward": forward_rows},
                      out, indent=2)


if __name__ == "__main__":
    main()
