"""Per-method round cost: one steady round of every built-in method on W, relative to FedAvg.

Every method runs under the ``relative`` fleet (the paper's participation structure scaled to
the cnn), FedAvg included, so methods that select by memory have devices to choose from; the
first round is a warm-up (lazy memory-model traces, worker models), the next is timed.
Training and evaluation are reported separately (``train_s``, ``eval_s``).

    python benchmarks/bench_methods.py
    nox -s bench -- benchmarks/bench_methods.py
"""

from __future__ import annotations

import argparse
import itertools

import pytest
import torch
from harness import workload

from fedbench import engine, registry

BUILTIN_METHODS = sorted(i.name for i in registry.available("methods") if i.builtin)
_FEDAVG: dict[str, float] = {}  # FedAvg's round, for the ratio of the methods after it


def prepared(method: str):  # noqa: ANN201 (Method)
    torch.set_num_threads(2)
    ctx, _ = engine.prepare(workload(rounds=10, method=method, fleet={"profile": "relative"}))
    return engine.make_method(ctx)


def one_round(method_obj, counter) -> dict[str, float]:  # noqa: ANN001
    return engine.run_round(method_obj, next(counter)).metrics


@pytest.mark.parametrize("method", ["fedavg"] + [m for m in BUILTIN_METHODS if m != "fedavg"])
def test_method_round_cost(benchmark, method):
    obj, counter = prepared(method), itertools.count()
    metrics = benchmark.pedantic(one_round, args=(obj, counter), rounds=1, iterations=1, warmup_rounds=1)
    round_s = metrics["time/round_s"]
    if method == "fedavg":
        _FEDAVG["round_s"] = round_s
    benchmark.extra_info.update({
        "train_s": round(metrics["time/train_s"], 4), "eval_s": round(metrics.get("time/eval_s", 0.0), 4),
        "round_s": round(round_s, 4), "clients": metrics["round/clients"],
    })
    if "round_s" in _FEDAVG:
        benchmark.extra_info["relative_to_fedavg"] = round(round_s / _FEDAVG["round_s"], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(BUILTIN_METHODS))
    args = parser.parse_args()
    print("| method | clients | train s | eval s | round s | × FedAvg |\n|---|---:|---:|---:|---:|---:|")
    base = None
    for name in ["fedavg"] + [m for m in args.methods.split(",") if m != "fedavg"]:
        obj, counter = prepared(name), itertools.count()
        one_round(obj, counter)
        m = one_round(obj, counter)
        base = base or m["time/round_s"]
        print(f"| {name} | {m['round/clients']:.0f} | {m['time/train_s']:.2f} | {m.get('time/eval_s', 0):.2f} | "
              f"{m['time/round_s']:.2f} | {m['time/round_s'] / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
