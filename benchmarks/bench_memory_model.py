"""Speed of the memory model behind ``fedbench memory``: every built-in model x every built-in
method's sub-models (ViT at Mini-ImageNet size, the others at CIFAR-10 size, batch 64), in a
fresh process with an empty trace cache, once cold and once again (cached in the process); then
the same sweep in a second process that finds the traces on disk (fedbench/trace_cache.py).
Also one exact trace of each full model's step with torch's meta kernels warm (fedbench's own
per-step cost, ``full_model_trace_ms``).
Goals: < 5 s cold, < 0.1 s cached.

    python benchmarks/bench_memory_model.py
    nox -s bench -- benchmarks/bench_memory_model.py
"""

from __future__ import annotations

import tempfile

from harness import run_child


def sweep_seconds() -> dict:
    """Figures of a first process (empty trace cache) and of the next one (the same cache)."""
    with tempfile.TemporaryDirectory(prefix="fedbench-traces-") as traces:
        first = run_child(["memory"], trace_cache=traces).report
        second = run_child(["memory"], trace_cache=traces).report
    return {
        "cold_s": round(first["cold_s"], 3), "cached_s": round(first["cached_s"], 4),
        "next_process_s": round(second["cold_s"], 3), "import_s": round(first["import_s"], 3),
        "rows": first["rows"], "models": len(first["models"]), "methods": len(first["methods"]),
        "full_model_trace_ms": first["full_model_trace_ms"],
    }


def test_memory_model_speed(benchmark):
    figures = benchmark.pedantic(sweep_seconds, rounds=1, iterations=1)
    benchmark.extra_info.update({**figures, "goal_cold_s": 5.0, "goal_cached_s": 0.1})


if __name__ == "__main__":
    result = sweep_seconds()
    print(f"{result['models']} models x {result['methods']} methods, {result['rows']} rows: "
          f"cold {result['cold_s']:.2f} s, cached {result['cached_s']:.4f} s, "
          f"next process (traces on disk) {result['next_process_s']:.2f} s (imports {result['import_s']:.2f} s)")
    print("one full-model step trace, meta kernels warm (ms, CPU time, best of 5):", result["full_model_trace_ms"])
