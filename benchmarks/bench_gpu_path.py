"""The GPU path, measured: round times of each way of training on one GPU, side by side in one process.

    python benchmarks/bench_gpu_path.py --data-dir /path/to/fashion-mnist --out OUT/
    python benchmarks/bench_gpu_path.py --paths transfer:8,resident,workers4 --profile --out OUT/
    python benchmarks/bench_gpu_path.py --paths resident --methods fedavg,depthfl --rounds 8 --out OUT/

Workload: full-width ResNet18 on Fashion-MNIST (``--data-dir``; the generated ``synthetic`` set
without it), 100 clients, Dirichlet alpha 0.5, 10 clients per round, ``--epochs`` local epochs
(5, the paper's), batch 64, no tracking. Paths:

``transfer``    ``resident: false``: the server keeps everything on the CPU, each client's model
                goes to the GPU and back, batches are made on the CPU.
``resident``    the default on a GPU: data (uint8), models and aggregation stay on the GPU.
``workersK``    ``resident`` with ``--executor process --workers K``: K trainers share the GPU.
``streamsK``    ``resident`` with ``--executor streams --workers K``: K trainer threads in one
                process, each on its own CUDA stream; ``graphs-streamsK`` with CUDA graphs.
``graphs``      ``resident`` with ``cuda_graphs``: each client's full-size steps replayed from a
                CUDA graph; ``graphs-workersK`` both.
``...-cl``      any of these with ``channels_last`` (e.g. ``graphs-cl``): convolutions in the
                NHWC layout cuDNN's tensor-core kernels compute in.
``plain``       a plain PyTorch loop training one model at batch 64 on the same resident data
                (``torch.optim.SGD``): the images/s a sequential client could reach at best.
``plain-graphsK`` K such models, each step of each captured as a CUDA graph on its own stream and
                the K graphs replayed in turn from one thread: ``plain-graphs1`` is the graphed
                sequential ceiling (the GPU's own time per step), ``plain-graphs4`` against it says
                whether clients trained side by side on streams would fill the GPU better than one
                after another (on a CPU the steps are called again instead, to check the code).

For every (method, path): the first round (start-up and warm-up included), the steady round time
(median of rounds 2 .. R-1; the last round also evaluates), images/s of a FedAvg round, the
time of the run's one evaluation (its first in the process: it includes first-use costs, such as
cuDNN choosing kernels for the evaluation's batch sizes, so the projection below is an upper
bound; ``bench_depthfl_feddyn.py`` times a warm evaluation forward), the accuracy after the last round (paths of the same number of rounds train the
same clients on the same samples, so they agree up to GPU non-determinism), and the projected time
of a paper cell: start-up + 1,600 steady rounds + 160
evaluations (every 10 rounds). ``--profile`` also writes, for the serial paths, the operators of
the last steady round (the one before the last) by GPU time and the share of the round the GPU was busy (``profile_<path>.txt``).
Writes ``OUT/gpu_path.json`` (one object per row) and ``OUT/gpu_path.md`` (the table). CPU-only
machines can check it with ``--device cpu --model cnn --epochs 1 --rounds 3`` (paths ``resident``,
``workersK``, ``streamsK``, ``plain``, ``plain-graphsK``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fedbench import engine
from fedbench.config import RunConfig, make_config

PAPER_ROUNDS, PAPER_EVALUATIONS = 1600, 160


def workload(method: str, path: str, args: argparse.Namespace) -> RunConfig:
    data = {"dataset": "fashion-mnist", "data_dir": args.data_dir} if args.data_dir else {"dataset": "synthetic"}
    overrides: dict[str, Any] = {
        "method": method, "data": {**data, "partition": "dirichlet", "alpha": 0.5, "num_clients": 100},
        "model": {"name": args.model, "width": args.width}, "train": {"local_epochs": args.epochs, "batch_size": 64},
        "clients_per_round": 10, "rounds": args.rounds, "eval_every": args.rounds, "seed": 42,
        "threads": args.threads, "device": args.device, "tracking": {"enabled": False},
        "cuda_graphs": False, "channels_last": False,  # each path says which it takes, whatever the defaults
    }
    if path.endswith("-cl"):
        overrides["channels_last"] = True
        path = path.removesuffix("-cl")
    if path == "transfer":
        overrides["resident"] = False
    if path.startswith("graphs"):
        overrides["cuda_graphs"] = True
        path = path.removeprefix("graphs").removeprefix("-")
    if path.startswith("workers"):
        overrides.update(executor="process", workers=int(path.removeprefix("workers")))
    if path.startswith("streams"):
        overrides.update(executor="streams", workers=int(path.removeprefix("streams")))
    return make_config(overrides=overrides)


def trained_images(config: RunConfig, rounds: range) -> dict[int, int]:
    """Images one FedAvg round trains (its clients' shards times the local epochs), per round."""
    ctx, _ = engine.prepare(dataclasses.replace(config, device="cpu", executor="serial", cuda_graphs=False))  # shard sizes only
    sizes = ctx.data.shard_sizes()
    return {r: int(sum(sizes[c] for c in ctx.sample_clients(r))) * config.train.local_epochs for r in rounds}


class Profiler:
    """torch.profiler around the last steady round of a run: the one before the last (which also
    evaluates), so that a graphed run has captured the graphs of its recurring last-batch sizes
    by then; round 2 of a run of fewer than 4 rounds."""

    def __init__(self, out: Path, name: str, rounds: int) -> None:
        self.out, self.name, self.profile = out, name, None
        self.round_idx = max(1, rounds - 2)  # 0-based

    def on_round(self, finished: engine.RoundResult) -> None:
        from torch.profiler import ProfilerActivity, profile

        if finished.round_idx == self.round_idx - 1:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self.profile = profile(activities=activities)
            self.profile.__enter__()
        elif finished.round_idx == self.round_idx and self.profile is not None:
            self.profile.__exit__(None, None, None)
            self.write(finished.metrics["time/train_s"])
            self.profile = None

    def write(self, round_s: float) -> None:
        events = self.profile.key_averages()
        gpu_us = sum(getattr(e, "self_device_time_total", 0.0) for e in events)
        sort = "self_device_time_total" if gpu_us else "self_cpu_time_total"
        header = (f"# {self.name}: round {self.round_idx + 1}, {round_s:.3f} s wall; kernels busy {gpu_us / 1e6:.3f} s "
                  f"({100 * gpu_us / 1e6 / round_s:.0f} % of the round)\n\n")
        (self.out / f"profile_{self.name}.txt").write_text(header + events.table(sort_by=sort, row_limit=30))


def measure(method: str, path: str, args: argparse.Namespace) -> dict[str, Any]:
    config = workload(method, path, args)
    stamps: list[float] = []
    rounds: list[engine.RoundResult] = []
    profiler = Profiler(args.out, f"{method}_{path}", config.rounds) if args.profile and "workers" not in path else None

    def on_round(finished: engine.RoundResult) -> None:
        if args.device != "cpu":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        rounds.append(finished)
        if profiler is not None:
            profiler.on_round(finished)

    start = time.perf_counter()
    engine.run(config, on_round=on_round)
    steady = [r.metrics["time/train_s"] for r in rounds[1:-1]] or [rounds[-1].metrics["time/train_s"]]
    steady_s = statistics.median(steady)
    eval_s = rounds[-1].metrics.get("time/eval_s", 0.0)
    startup_s = (stamps[0] - start) - steady_s
    row: dict[str, Any] = {
        "method": method, "path": path, "rounds": len(rounds), "first_round_s": stamps[0] - start,
        "steady_round_s": steady_s, "eval_s": eval_s, "accuracy": rounds[-1].metrics.get("eval/accuracy"),
        "paper_cell_min": (startup_s + PAPER_ROUNDS * steady_s + PAPER_EVALUATIONS * eval_s) / 60,
    }
    if method == "fedavg":
        images = trained_images(config, range(1, len(rounds) - 1))
        row["images_per_s"] = statistics.median(images[r.round_idx] / r.metrics["time/train_s"] for r in rounds[1:-1])
    return row


def plain_data(args: argparse.Namespace) -> Any:
    """The workload's data set, on the device."""
    from fedbench.core.setup import load_dataset

    return load_dataset(workload("fedavg", "resident", args)).to(args.device)


def plain_model(args: argparse.Namespace, dataset: Any, layout: torch.memory_format = torch.contiguous_format,
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A plain loop's model, in training mode on the device, and its torch.optim.SGD."""
    from fedbench.models import build_model

    model = build_model(args.model, dataset.input_shape, dataset.num_classes, width=args.width)
    model = model.to(args.device, memory_format=layout).train()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)


def plain_loop(args: argparse.Namespace) -> dict[str, Any]:
    """One model, batch 64, resident data, torch.optim.SGD: the sequential ceiling."""
    steps, warmup = args.plain_steps, max(args.plain_steps // 10, 1)
    torch.manual_seed(0)
    dataset = plain_data(args)
    model, optimizer = plain_model(args, dataset)
    order = torch.randint(0, dataset.num_train, (steps + warmup, 64), device=args.device)
    for step in range(steps + warmup):
        if step == warmup:
            if args.device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
        images, labels = dataset.train_batch(order[step])
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    if args.device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"method": "-", "path": "plain", "steps": steps, "images_per_s": steps * 64 / seconds,
            "step_ms": 1000 * seconds / steps}


def plain_graphs(args: argparse.Namespace, models: int, channels_last: bool = False) -> dict[str, Any]:
    """``models`` plain loops, each step captured once as a graph on its own stream (and memory pool)
    and replayed in turn: one thread launches all of them, so their kernels may overlap."""
    from fedbench.training.graphs import CudaStepGraph, ReplayedStep

    steps, warmup = args.plain_steps, max(args.plain_steps // 10, 1)
    cuda = args.device != "cpu"
    layout = torch.channels_last if channels_last else torch.contiguous_format
    dataset = plain_data(args)
    order = torch.randint(0, dataset.num_train, (steps + warmup, models, 64), device=args.device)
    torch.manual_seed(0)
    trainers = []
    for _ in range(models):
        model, optimizer = plain_model(args, dataset, layout)
        first_images, first_labels = dataset.train_batch(order[0, 0])
        images, labels = first_images.contiguous(memory_format=layout), first_labels.clone()

        def step(model=model, optimizer=optimizer, images=images, labels=labels) -> None:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()

        graph = CudaStepGraph() if cuda else ReplayedStep()
        for _ in range(3):  # cuDNN's choices and the momentum buffers, on the graph's stream
            with graph.warmup(strict=False):
                step()
        graph.capture(step)
        trainers.append((graph, images, labels))
    if cuda:
        torch.cuda.synchronize()
    for index in range(steps + warmup):
        if index == warmup:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
        for k, (graph, images, labels) in enumerate(trainers):
            with torch.cuda.stream(graph.stream) if cuda else contextlib.nullcontext():
                batch_images, batch_labels = dataset.train_batch(order[index, k])
                images.copy_(batch_images)
                labels.copy_(batch_labels)
                graph.replay()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"method": "-", "path": f"plain-graphs{models}" + ("-cl" if channels_last else ""), "steps": steps,
            "images_per_s": steps * models * 64 / seconds, "step_ms": 1000 * seconds / (steps * models)}


def plain_row(path: str, args: argparse.Namespace) -> dict[str, Any]:
    """The row of a ``plain`` or ``plain-graphsK[-cl]`` path."""
    if path == "plain":
        return plain_loop(args)
    models = path.removeprefix("plain-graphs").removesuffix("-cl")
    if not models.isdigit() or int(models) < 1:
        raise ValueError(f"unknown path {path!r}; plain-graphsK takes a number of models K >= 1")
    return plain_graphs(args, int(models), channels_last=path.endswith("-cl"))


def table(rows: list[dict[str, Any]]) -> str:
    base = {r["method"]: r["steady_round_s"] for r in rows if r.get("path") == "transfer"}
    fedavg = {r["path"]: r["steady_round_s"] for r in rows if r.get("method") == "fedavg" and "steady_round_s" in r}
    lines = ["| method | path | first round s | steady round s | vs transfer | vs FedAvg (same path) | images/s "
             "| first eval s | paper cell (1,600 rounds) min | accuracy after the last round |", "|---" * 10 + "|"]

    def cell(value: Any, spec: str) -> str:
        return "" if value is None else format(value, spec)

    for r in rows:
        steady = r.get("steady_round_s")
        speedup = base.get(r["method"], 0) / steady if steady and r["method"] in base else None
        relative = steady / fedavg[r["path"]] if steady and r["path"] in fedavg else None
        lines.append(f"| {r['method']} | {r['path']} | {cell(r.get('first_round_s'), '.2f')} | {cell(steady, '.3f')} "
                     f"| {cell(speedup, '.2f')} | {cell(relative, '.2f')} | {cell(r.get('images_per_s'), ',.0f')} "
                     f"| {cell(r.get('eval_s'), '.2f')} | {cell(r.get('paper_cell_min'), '.0f')} "
                     f"| {r['error'] if 'error' in r else cell(r.get('accuracy'), '.4f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: the generated synthetic set)")
    parser.add_argument("--methods", default="fedavg", help="comma-separated, e.g. fedavg,depthfl")
    parser.add_argument("--paths", default="plain,transfer,resident,workers2,workers4",
                        help="comma-separated; PATH:ROUNDS gives a path its own number of rounds")
    parser.add_argument("--rounds", type=int, default=22, help="rounds per (method, path); >= 3")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--plain-steps", type=int, default=400, help="timed steps of the plain loop")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (a first round, steady rounds, an evaluating last round)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for spec in args.paths.split(","):
        path, _, rounds = spec.partition(":")
        run_args = argparse.Namespace(**{**vars(args), "rounds": int(rounds) if rounds else args.rounds})
        plain = path.startswith("plain")
        for method in ["-"] if plain else args.methods.split(","):
            try:
                row = plain_row(path, run_args) if plain else measure(method, path, run_args)
            except Exception as exc:  # one broken path must not cost the others' rows
                row = {"method": method, "path": path, "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "gpu_path.json").write_text(json.dumps(rows, indent=1))
            (args.out / "gpu_path.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
