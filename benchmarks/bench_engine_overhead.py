"""Engine overhead: a fedbench round vs a plain PyTorch loop doing the same work.

Workload W (issue 13): Fashion-MNIST, 100 clients, Dirichlet alpha 0.5, ``cnn``,
10 clients per round, 1 local epoch, batch 64, SGD 0.01/0.9/5e-4, evaluation
every round at batch 256. Both loops use the same shards, the same selected
clients and the same per-client shuffling seeds, and alternate round by round in
one process so that machine noise hits both alike.

    python benchmarks/bench_engine_overhead.py --rounds 6          # prints the table
    pytest benchmarks/bench_engine_overhead.py --benchmark-only    # pytest-benchmark
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from fedbench import engine
from fedbench.config import RunConfig, make_config
from fedbench.method import Method

WORKLOAD = {
    "data": {"dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5, "num_clients": 100},
    "model": {"name": "cnn"},
    "train": {"local_epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "clients_per_round": 10,
    "eval_every": 1,
    "eval_batch_size": 256,
    "tracking": {"enabled": False},
}


def workload(rounds: int = 1, **overrides) -> RunConfig:
    return make_config(overrides={**WORKLOAD, "rounds": rounds, **overrides})


class PlainLoop:
    """Hand-written FedAvg on the same tensors: what the engine costs is the difference."""

    def __init__(self, method: Method) -> None:
        self.ctx = method.ctx
        self.global_model = copy.deepcopy(method.global_model)
        self.local_model = copy.deepcopy(method.global_model)
        data = self.ctx.data.dataset
        self.images, self.labels = data.train_images, data.train_labels
        self.mean, self.std = float(data.mean[0]), float(data.std[0])

    def _prep(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255 - self.mean) / self.std

    def train(self, round_idx: int, clients: list[int]) -> None:
        cfg = self.ctx.config.train
        states = []
        for client in clients:
            self.local_model.load_state_dict(self.global_model.state_dict())
            self.local_model.train()
            opt = torch.optim.SGD(self.local_model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
            gen = self.ctx.client_generator(round_idx, client)
            shard = self.ctx.data.shards[client]
            for _ in range(cfg.local_epochs):
                order = shard[torch.randperm(shard.numel(), generator=gen)]
                for start in range(0, order.numel(), cfg.batch_size):
                    batch = order[start : start + cfg.batch_size]
                    if batch.numel() < 2:
                        continue
                    opt.zero_grad()
                    loss = F.cross_entropy(self.local_model(self._prep(self.images[batch])), self.labels[batch])
                    loss.backward()
                    opt.step()
            states.append({k: v.clone() for k, v in self.local_model.state_dict().items()})
        averaged = {k: torch.stack([s[k].double() for s in states]).mean(0).to(states[0][k].dtype)
                    for k in states[0]}
        self.global_model.load_state_dict(averaged)

    @torch.no_grad()
    def evaluate(self, batch_size: int) -> float:
        self.global_model.eval()
        data, correct = self.ctx.data.dataset, 0
        for start in range(0, data.test_labels.numel(), batch_size):
            logits = self.global_model(self._prep(data.test_images[start : start + batch_size]))
            correct += int((logits.argmax(1) == data.test_labels[start : start + batch_size]).sum())
        return correct / data.test_labels.numel()


def compare(rounds: int, threads: int = 2) -> dict[str, float]:
    """Alternate engine and plain rounds; medians of the steady-state rounds (first dropped)."""
    torch.set_num_threads(threads)
    config = workload(rounds=rounds)
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    plain = PlainLoop(method)
    times: dict[str, list[float]] = {k: [] for k in ("fb_train", "fb_eval", "plain_train", "plain_eval")}
    for round_idx in range(rounds):
        clients = [a.client_id for a in method.assign(round_idx)]
        t0 = time.perf_counter()
        plain.train(round_idx, clients)
        t1 = time.perf_counter()
        plain.evaluate(config.eval_batch_size)
        t2 = time.perf_counter()
        single = _single_round(method, round_idx)
        if round_idx > 0:
            times["plain_train"].append(t1 - t0)
            times["plain_eval"].append(t2 - t1)
            times["fb_train"].append(single["time/train_s"])
            times["fb_eval"].append(single["time/eval_s"])
    med = {k: statistics.median(v) for k, v in times.items()}
    med["ratio_train"] = med["fb_train"] / med["plain_train"]
    med["ratio_eval"] = med["fb_eval"] / med["plain_eval"]
    med["ratio_round"] = (med["fb_train"] + med["fb_eval"]) / (med["plain_train"] + med["plain_eval"])
    return med


def _single_round(method: Method, round_idx: int) -> dict[str, float]:
    return engine.run_round(method, round_idx).metrics


# ------------------------------------------------------------ pytest-benchmark
def test_engine_round(benchmark):
    torch.set_num_threads(2)
    ctx, _ = engine.prepare(workload())
    method = engine.make_method(ctx)
    counter = iter(range(10**6))
    benchmark.pedantic(lambda: _single_round(method, next(counter)), rounds=4, warmup_rounds=1)


def test_plain_round(benchmark):
    torch.set_num_threads(2)
    ctx, _ = engine.prepare(workload())
    method = engine.make_method(ctx)
    plain = PlainLoop(method)
    counter = iter(range(10**6))

    def one_round() -> None:
        r = next(counter)
        plain.train(r, [a.client_id for a in method.assign(r)])
        plain.evaluate(256)

    benchmark.pedantic(one_round, rounds=4, warmup_rounds=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    result = compare(args.rounds, args.threads)
    print(f"{'':12}{'fedbench':>10}{'plain':>10}{'ratio':>8}")
    for part in ("train", "eval"):
        print(f"{part + ' s':12}{result['fb_' + part]:10.3f}{result['plain_' + part]:10.3f}{result['ratio_' + part]:8.3f}")
    print(f"{'round':12}{'':20}{result['ratio_round']:8.3f}")
