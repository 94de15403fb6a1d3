"""Engine overhead: a fedbench round vs a plain PyTorch loop doing the same work.

Workload W (issue 13): Fashion-MNIST, 100 clients, Dirichlet alpha 0.5, ``cnn``,
10 clients per round, 1 local epoch, batch 64, SGD 0.01/0.9/5e-4, evaluation
every round at batch 256. Both loops use the same shards, the same selected
clients and the same per-client shuffling seeds, and alternate round by round in
one process so that machine noise hits both alike.

    python benchmarks/bench_engine_overhead.py --rounds 6          # prints the table
    nox -s bench -- benchmarks/bench_engine_overhead.py            # pytest-benchmark JSON
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from harness import PlainLoop, workload

from fedbench import engine
from fedbench.core.method import Method


def compare(rounds: int, threads: int = 2, on_pair=None) -> dict[str, float]:  # noqa: ANN001
    """Alternate plain and engine rounds on the same clients; medians of the steady-state
    rounds (the first is dropped: it pays lazy set-up on both sides)."""
    torch.set_num_threads(threads)
    config = workload(rounds=rounds)
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    plain = PlainLoop.from_method(method)
    times: dict[str, list[float]] = {k: [] for k in ("fb_train", "fb_eval", "plain_train", "plain_eval")}
    for round_idx in range(rounds):
        pair_start = time.perf_counter()
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
        if on_pair is not None:
            on_pair(time.perf_counter() - pair_start)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["ratio_train"] = med["fb_train"] / med["plain_train"]
    med["ratio_eval"] = med["fb_eval"] / med["plain_eval"]
    med["ratio_round"] = (med["fb_train"] + med["fb_eval"]) / (med["plain_train"] + med["plain_eval"])
    return med


def _single_round(method: Method, round_idx: int) -> dict[str, float]:
    return engine.run_round(method, round_idx).metrics


# ------------------------------------------------------------ pytest-benchmark
def test_engine_overhead(benchmark, bench_rounds):
    """Issue 13 figure 1: steady round time of the engine over the plain loop (goal <= 1.05),
    training and evaluation separately. The benchmark's own timing is one (plain + engine) pair."""
    pairs: list[float] = []
    result = benchmark.pedantic(compare, args=(max(bench_rounds // 2, 3),), kwargs={"on_pair": pairs.append},
                                rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 4) for k, v in result.items()})
    benchmark.extra_info["goal_ratio_round"] = 1.05


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
