"""Shared pieces of the benchmark suite: workload W, the plain PyTorch loop, fresh-process runs.

Workload W (issue 13): Fashion-MNIST, 100 clients, Dirichlet alpha 0.5, ``cnn``, 10 clients
per round, 1 local epoch, batch 64, SGD 0.01/0.9/5e-4, evaluation every round (batch 256),
2 torch threads.

Measurements that compare memory or start-up run in a fresh child process each, so one
measurement's imports, caches and allocator state never leak into another's. The child is this
file run as a script:

    python benchmarks/harness.py fedbench --clients 100 --rounds 10 --out r.json --t0 <epoch s>
    python benchmarks/harness.py plain --rounds 10 --out r.json

``fedbench`` runs the real ``fedbench run`` command line (MLflow logging into a temporary store,
checkpoints on) with two timers patched in: the end of every round and the time spent inside
the shared SGD loop. ``plain`` runs the same training with a hand-written loop.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024

WORKLOAD: dict[str, Any] = {
    "method": "fedavg",
    "data": {"dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5, "num_clients": 100},
    "model": {"name": "cnn"},
    "train": {"local_epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "clients_per_round": 10,
    "eval_every": 1,
    "eval_batch_size": 256,
    "threads": 2,
    "seed": 42,
}


def workload(rounds: int = 1, **overrides: Any):  # noqa: ANN201 (RunConfig; torch is imported lazily)
    """W as a RunConfig without tracking, for in-process measurements."""
    from fedbench.config import make_config

    return make_config(overrides={**WORKLOAD, "tracking": {"enabled": False}, "rounds": rounds, **overrides})


def sample_round_clients(seed: int, round_idx: int, num_clients: int, per_round: int) -> list[int]:
    """The clients fedbench's default selection picks (uniform, without replacement, sorted):
    the plain loop trains the same ones."""
    import numpy as np

    from fedbench.seeding import Stream, numpy_rng

    chosen = numpy_rng(seed, Stream.SELECTION, round_idx).choice(np.arange(num_clients), size=per_round, replace=False)
    return sorted(int(c) for c in chosen)


class PlainLoop:
    """Hand-written FedAvg on the same tensors: what the engine costs is the difference.

    No engine, no hooks, no metrics beyond accuracy: load the global state into one local model,
    shuffle the shard with the client's generator, SGD, average the states uniformly."""

    def __init__(self, dataset: Any, shards: list, model: Any, train: Any, seed: int) -> None:
        import copy

        self.dataset, self.shards, self.train_cfg, self.seed = dataset, shards, train, seed
        self.global_model = model
        self.local_model = copy.deepcopy(model)
        self.mean, self.std = float(dataset.mean[0]), float(dataset.std[0])

    @classmethod
    def from_method(cls, method: Any) -> PlainLoop:
        """The plain loop on the data, shards and initial weights of a prepared fedbench method."""
        import copy

        ctx = method.ctx
        return cls(ctx.data.dataset, ctx.data.shards, copy.deepcopy(method.global_model), ctx.config.train,
                   ctx.config.seed)

    def _prep(self, images: Any) -> Any:
        return (images.float() / 255 - self.mean) / self.std

    def train(self, round_idx: int, clients: list[int]) -> None:
        import torch
        import torch.nn.functional as F

        from fedbench.seeding import Stream, torch_generator

        cfg, images, labels = self.train_cfg, self.dataset.train_images, self.dataset.train_labels
        states = []
        for client in clients:
            self.local_model.load_state_dict(self.global_model.state_dict())
            self.local_model.train()
            opt = torch.optim.SGD(self.local_model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
            gen = torch_generator(self.seed, Stream.CLIENT, round_idx, client)
            shard = self.shards[client]
            for _ in range(cfg.local_epochs):
                order = shard[torch.randperm(shard.numel(), generator=gen)]
                for start in range(0, order.numel(), cfg.batch_size):
                    batch = order[start : start + cfg.batch_size]
                    if batch.numel() < 2:
                        continue
                    opt.zero_grad()
                    loss = F.cross_entropy(self.local_model(self._prep(images[batch])), labels[batch])
                    loss.backward()
                    opt.step()
            states.append({k: v.clone() for k, v in self.local_model.state_dict().items()})
        averaged = {k: torch.stack([s[k].double() for s in states]).mean(0).to(states[0][k].dtype)
                    for k in states[0]}
        self.global_model.load_state_dict(averaged)

    def evaluate(self, batch_size: int) -> float:
        import torch

        data, correct = self.dataset, 0
        self.global_model.eval()
        with torch.no_grad():
            for start in range(0, data.test_labels.numel(), batch_size):
                logits = self.global_model(self._prep(data.test_images[start : start + batch_size]))
                correct += int((logits.argmax(1) == data.test_labels[start : start + batch_size]).sum())
        return correct / data.test_labels.numel()


# ------------------------------------------------------------ child processes
@dataclass(frozen=True)
class ChildResult:
    """What a child process reported, plus what the parent saw: wall time and peak RSS."""

    report: dict[str, Any]
    wall_s: float
    peak_rss_bytes: int


def run_child(args: list[str], timeout_s: float = 900, trace_cache: str | None = None) -> ChildResult:
    """Run ``harness.py <args>`` in a fresh process (its own temporary folder as cwd, so MLflow's
    store and checkpoints land there) and return its JSON report and its own peak RSS.

    The child's trace cache (fedbench/tracing/cache.py) is an empty folder of its own, so every
    figure is that of a machine's first run, unless ``trace_cache`` names a folder to share
    (a user's later runs)."""
    with tempfile.TemporaryDirectory(prefix="fedbench-bench-") as tmp:
        out = Path(tmp) / "report.json"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "FEDBENCH_CHECKPOINTS": str(Path(tmp) / "ckpt"),
               "FEDBENCH_TRACE_CACHE": trace_cache or str(Path(tmp) / "traces")}
        t0 = time.time()
        cmd = [sys.executable, str(HERE / "harness.py"), *args, "--out", str(out), "--t0", repr(t0)]
        proc = subprocess.Popen(cmd, cwd=tmp, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{' '.join(cmd)} ran past {timeout_s} s")
            time.sleep(0.02)
        wall = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}")
        report = json.loads(out.read_text())
        return ChildResult(report, wall, report.pop("peak_rss_bytes"))


def command_seconds(cmd: list[str], **env: str) -> float:
    """Wall time of one command in a fresh process (output discarded), ``env`` added to ours."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **env})
    return time.perf_counter() - start


def steady(values: list[float]) -> float:
    """Median of the steady-state rounds (round 0 dropped: it pays lazy set-up)."""
    import statistics

    return statistics.median(values[1:] if len(values) > 1 else values)


class _AfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Runs ``then(module)`` right after module ``name`` is first imported, wherever that happens."""

    def __init__(self, name: str, then: Any) -> None:
        self.name, self.then, self.inner = name, then, None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        self.inner, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self.inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.inner.exec_module(module)
        self.then(module)


def _fedbench_child(args: argparse.Namespace) -> dict[str, Any]:
    """``fedbench run`` on W through the real command line, with round-end and SGD timers."""
    import yaml

    config = {**WORKLOAD, "rounds": args.rounds, "data": {**WORKLOAD["data"], "num_clients": args.clients},
              "tracking": {"uri": os.environ.get("FEDBENCH_BENCH_STORE", "sqlite:///mlflow.db"), "experiment": "bench"}}
    if args.method:
        config["method"] = args.method
    Path("w.yaml").write_text(yaml.safe_dump(config))

    sgd_s: list[float] = []
    round_end: list[float] = []
    round_logged: list[float] = []  # when each round was in the MLflow store: a round is finished then
    metrics: list[dict[str, float]] = []
    phases: dict[str, float] = {}  # start-up milestones, seconds since process start

    def timed_phase(owner: Any, name: str) -> None:
        """Record when ``owner.name`` is first entered and left (``name_begin_s`` / ``name_end_s``)."""
        original = getattr(owner, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            phases.setdefault(f"{name}_begin_s", time.time() - args.t0)
            try:
                return original(*a, **k)
            finally:
                phases.setdefault(f"{name}_end_s", time.time() - args.t0)

        setattr(owner, name, wrapper)

    def patch(engine: Any) -> None:
        """Timers around the SGD loop and the round, put in when the CLI imports the engine (not
        before: the CLI's start-up order, e.g. MLflow's helper starting before torch, is measured)."""
        from fedbench.core import method
        from fedbench.tracking import helper_process as tracking_process
        from fedbench.training import loop as training

        phases["engine_imported_s"] = time.time() - args.t0  # torch is in by then
        timed_phase(engine, "_trace_before_round_one")  # round 1's meta traces (torch._dynamo's import)
        timed_phase(tracking_process.ProcessTracker, "start")  # waiting for MLflow's helper to create the run
        original_log_round = tracking_process.ProcessTracker.log_round

        def timed_log_round(*a: Any, **k: Any) -> Any:
            try:
                return original_log_round(*a, **k)
            finally:
                round_logged.append(time.time())

        tracking_process.ProcessTracker.log_round = timed_log_round

        def timed_sgd(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            try:
                return training.local_sgd(*a, **k)
            finally:
                sgd_s[-1] += time.perf_counter() - start

        original_round = engine.run_round

        def timed_round(*a: Any, **k: Any) -> Any:  # the engine's run_round, whatever it takes
            sgd_s.append(0.0)
            result = original_round(*a, **k)
            round_end.append(time.time())
            metrics.append(dict(result.metrics))
            return result

        method.local_sgd = timed_sgd
        engine.run_round = timed_round

    sys.meta_path.insert(0, _AfterImport("fedbench.engine", patch))
    import fedbench

    if (Path(fedbench.__file__).parent / "launch.py").is_file():
        from fedbench.cli.main import main as fedbench_command  # what the `fedbench` console script runs
    else:  # code without the launcher module (an A/B run against another commit on PYTHONPATH)
        from fedbench.cli.main import main as fedbench_command

    sys.argv = ["fedbench", "run", "--config", "w.yaml"]
    try:
        fedbench_command()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    walls = [round_end[0] - args.t0] + [b - a for a, b in zip(round_end, round_end[1:], strict=False)]
    return {
        "clients": args.clients,
        "round_end_since_start_s": [t - args.t0 for t in round_end],
        "round_logged_since_start_s": [t - args.t0 for t in round_logged],
        "round_wall_s": walls,
        "sgd_s": sgd_s,
        "eval_s": [m.get("time/eval_s", 0.0) for m in metrics],
        "train_s": [m["time/train_s"] for m in metrics],
        "accuracy": [m.get("eval/accuracy") for m in metrics],
        "done_since_start_s": time.time() - args.t0,
        "startup_phases": {k: round(v, 3) for k, v in phases.items()},
        "compiler_imported": "torch._dynamo" in sys.modules,
    }


def _plain_child(args: argparse.Namespace) -> dict[str, Any]:
    """The plain loop end to end: load Fashion-MNIST, split it, train and evaluate ``rounds`` rounds."""
    import torch

    from fedbench.config import DataConfig, TrainConfig
    from fedbench.datasets.fashion_mnist import load
    from fedbench.datasets.partitioners import dirichlet
    from fedbench.models import build_model
    from fedbench.seeding import Stream, numpy_rng

    torch.set_num_threads(WORKLOAD["threads"])
    seed = WORKLOAD["seed"]
    dataset = load(None)
    data = DataConfig(**{**WORKLOAD["data"], "num_clients": args.clients})
    shards = [torch.as_tensor(s) for s in dirichlet(dataset.train_labels.numpy(), data, numpy_rng(seed, Stream.PARTITION))]
    torch.manual_seed(seed)
    model = build_model(WORKLOAD["model"]["name"], dataset.input_shape, dataset.num_classes)
    plain = PlainLoop(dataset, shards, model, TrainConfig(**WORKLOAD["train"]), seed)
    train_s, eval_s, accuracy = [], [], []
    for round_idx in range(args.rounds):
        t0 = time.perf_counter()
        plain.train(round_idx, sample_round_clients(seed, round_idx, args.clients, WORKLOAD["clients_per_round"]))
        t1 = time.perf_counter()
        accuracy.append(plain.evaluate(WORKLOAD["eval_batch_size"]))
        train_s.append(t1 - t0)
        eval_s.append(time.perf_counter() - t1)
    return {"train_s": train_s, "eval_s": eval_s, "accuracy": accuracy, "done_since_start_s": time.time() - args.t0}


MEMORY_DATASET_OF = {"vit": "mini-imagenet"}  # ViT's own data set; every other model at CIFAR-10 size


def builtin_names() -> tuple[list[str], list[str]]:
    """(built-in models, built-in methods): what the memory sweep covers."""
    from fedbench import registry

    return ([i.name for i in registry.available("models") if i.builtin],
            [i.name for i in registry.available("methods") if i.builtin])


def memory_sweep(models: list[str], methods: list[str], jobs: int = 0) -> int:
    """``fedbench memory`` rows of every model x method (batch 64, the uniform-mb fleet) in ``jobs``
    worker processes (0: one per core, 1: this process alone); the row count."""
    from fedbench.reports.memory_table import memory_table

    pairs = [(model, MEMORY_DATASET_OF.get(model, "cifar10"), name) for model in models for name in methods]
    return len(memory_table(pairs, 64, "uniform-mb", jobs=jobs))


def _memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """``fedbench memory`` rows for every model x every built-in method, twice (cold, then cached)."""
    start = time.perf_counter()
    from fedbench import registry  # noqa: F401  (what a `fedbench memory` process imports)
    from fedbench.reports.memory_table import memory_table  # noqa: F401

    import_s = time.perf_counter() - start
    models, methods = builtin_names()
    passes = []
    for _ in range(2):
        t0 = time.perf_counter()
        import torch  # noqa: F401  (the first pass pays torch's import, as `fedbench memory` does)

        rows = memory_sweep(models, methods, args.jobs)
        passes.append(time.perf_counter() - t0)
    return {"import_s": import_s, "cold_s": passes[0], "cached_s": passes[1], "rows": rows,
            "models": models, "methods": methods, "jobs": args.jobs,
            "full_model_trace_ms": _full_model_trace_ms(models, MEMORY_DATASET_OF)}


def _full_model_trace_ms(models: list[str], dataset_of: dict[str, str]) -> dict[str, float]:
    """One exact trace of each full model's training step (batch 64), the process-wide caches
    bypassed but torch's meta kernels already warm: fedbench's own per-step cost, best of 5."""
    from fedbench.memory.model import peak_training_bytes
    from fedbench.models import build_model
    from fedbench.reports.memory_table import KNOWN_SHAPES
    from fedbench.tracing.meta import building_on_meta

    found = {}
    for name in models:
        shape, classes = KNOWN_SHAPES[dataset_of.get(name, "cifar10")]
        with building_on_meta():
            model = build_model(name, shape, classes)
        times = []
        for _ in range(6):
            start = time.process_time()
            peak_training_bytes(model, None, 64, shape)
            times.append(time.process_time() - start)
        found[name] = round(1000 * min(times[1:]), 2)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark child process (see the module docstring)")
    parser.add_argument("kind", choices=["fedbench", "plain", "memory"])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--method", default=None)
    parser.add_argument("--jobs", type=int, default=0, help="memory: worker processes (0: one per core)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--t0", type=float, default=None, help="the parent's clock just before the spawn")
    args = parser.parse_args()
    if args.t0 is None:
        args.t0 = time.time()
    run = {"fedbench": _fedbench_child, "plain": _plain_child, "memory": _memory_child}[args.kind]
    report = run(args)
    report["peak_rss_bytes"] = peak_rss_bytes()
    Path(args.out).write_text(json.dumps(report))


def peak_rss_bytes() -> int:
    """This process's peak resident set since its exec (``VmHWM``). Not ``ru_maxrss``: Linux
    keeps that across exec, so a child forked from a big parent (pytest with torch loaded)
    would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    main()
