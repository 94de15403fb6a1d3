"""Speed of the memory model behind ``fedbench memory``: every built-in model x every built-in
method's sub-models (ViT at Mini-ImageNet size, the others at CIFAR-10 size, batch 64), in a
fresh process with an empty trace cache, once cold and once again (cached in the process); then
the same sweep in a second process that finds the traces on disk (fedbench/tracing/cache.py).
The table runs its (model, method) pairs in one worker process per core (``fedbench memory
--model all --method all``, reports/memory_table.py); the same sweep in one process
(``--jobs 1``) is measured beside it.
Also one exact trace of each full model's step with torch's meta kernels warm (fedbench's own
per-step cost, ``full_model_trace_ms``).
Goals: < 5 s cold, < 0.1 s cached.

    python benchmarks/bench_memory_model.py
    nox -s bench -- benchmarks/bench_memory_model.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from harness import command_seconds, run_child


def all_pairs_command_seconds(jobs: int) -> float:
    """Wall time of ``fedbench memory --model all --method all --dataset cifar10`` (every
    registered model and method, plugins included) in a fresh process with an empty trace cache:
    what a user waits for, interpreter start and imports included."""
    fedbench = str(Path(sys.executable).with_name("fedbench"))
    with tempfile.TemporaryDirectory(prefix="fedbench-traces-") as traces:
        return command_seconds([fedbench, "memory", "--model", "all", "--method", "all", "--dataset", "cifar10",
                                "--jobs", str(jobs), "--json"], FEDBENCH_TRACE_CACHE=traces)


def sweep_seconds() -> dict:
    """Figures of a first process (empty trace cache) and of the next one (the same cache), with
    one worker per core and, beside it, in one process."""
    found: dict = {}
    for label, jobs in (("", 0), ("serial_", 1)):
        with tempfile.TemporaryDirectory(prefix="fedbench-traces-") as traces:
            first = run_child(["memory", "--jobs", str(jobs)], trace_cache=traces).report
            second = run_child(["memory", "--jobs", str(jobs)], trace_cache=traces).report
        found.update({f"{label}cold_s": round(first["cold_s"], 3), f"{label}cached_s": round(first["cached_s"], 4),
                      f"{label}next_process_s": round(second["cold_s"], 3)})
        if jobs == 0:
            found.update({"import_s": round(first["import_s"], 3), "rows": first["rows"],
                          "models": len(first["models"]), "methods": len(first["methods"]),
                          "full_model_trace_ms": first["full_model_trace_ms"]})
        found[f"{label}command_s"] = round(all_pairs_command_seconds(jobs), 3)
    return found


def test_memory_model_speed(benchmark):
    figures = benchmark.pedantic(sweep_seconds, rounds=1, iterations=1)
    benchmark.extra_info.update({**figures, "goal_cold_s": 5.0, "goal_cached_s": 0.1})


if __name__ == "__main__":
    result = sweep_seconds()
    print(f"{result['models']} models x {result['methods']} methods, {result['rows']} rows: "
          f"cold {result['cold_s']:.2f} s, cached {result['cached_s']:.4f} s, "
          f"next process (traces on disk) {result['next_process_s']:.2f} s (imports {result['import_s']:.2f} s)")
    print(f"the same in one process (--jobs 1): cold {result['serial_cold_s']:.2f} s, cached "
          f"{result['serial_cached_s']:.4f} s, next process {result['serial_next_process_s']:.2f} s")
    print(f"`fedbench memory --model all --method all` from process start, empty trace cache: "
          f"{result['command_s']:.2f} s (--jobs 1: {result['serial_command_s']:.2f} s)")
    print("one full-model step trace, meta kernels warm (ms, CPU time, best of 5):", result["full_model_trace_ms"])
