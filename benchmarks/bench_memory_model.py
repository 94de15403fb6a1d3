"""Speed of the memory model behind ``fedbench memory``: every built-in model x every built-in
method's sub-models (ViT at Mini-ImageNet size, the others at CIFAR-10 size, batch 64), in a
fresh process, once cold and once again (cached). Goals: < 5 s cold, < 0.1 s cached.

The cache is per process (fedbench/memory.py and ``workload_reports`` in fedbench/cli_memory.py):
a second ``fedbench memory`` *process* pays the import of torch (about 1 s on its own), so no
on-disk cache could bring it under 0.1 s, and one would go stale when model code changes.

    python benchmarks/bench_memory_model.py
    nox -s bench -- benchmarks/bench_memory_model.py
"""

from __future__ import annotations

from harness import run_child


def test_memory_model_speed(benchmark):
    child = benchmark.pedantic(run_child, args=(["memory"],), rounds=1, iterations=1)
    report = child.report
    benchmark.extra_info.update({
        "cold_s": round(report["cold_s"], 3), "cached_s": round(report["cached_s"], 4),
        "import_s": round(report["import_s"], 3), "rows": report["rows"],
        "models": len(report["models"]), "methods": len(report["methods"]),
        "goal_cold_s": 5.0, "goal_cached_s": 0.1,
    })


if __name__ == "__main__":
    result = run_child(["memory"]).report
    print(f"{len(result['models'])} models x {len(result['methods'])} methods, {result['rows']} rows: "
          f"cold {result['cold_s']:.2f} s, cached {result['cached_s']:.4f} s (imports {result['import_s']:.2f} s)")
