"""Where a first process's ``fedbench memory`` sweep goes: torch's one-time imports, the first run
of each meta kernel, and fedbench's own work (the same sweep again with every kernel warm, split
into exact traces and the rest: building sub-models, block shapes, fleet).

    FEDBENCH_TRACE_CACHE=off python benchmarks/memory_sweep_split.py

Run it in a fresh process with the trace cache off (it measures tracing, not reading traces).
"""

from __future__ import annotations

import time


def main() -> None:
    start = time.perf_counter()
    import torch  # noqa: F401

    torch_s = time.perf_counter() - start
    import torch.fx.experimental.symbolic_shapes  # noqa: F401  (sympy: the first meta kernels import it)

    sympy_s = time.perf_counter() - start - torch_s
    import torch._dynamo  # noqa: F401  (the first _disable_dynamo-wrapped kernel imports it)

    compiler_s = time.perf_counter() - start - torch_s - sympy_s

    from harness import builtin_names, memory_sweep

    from fedbench.memory import model as memory
    from fedbench.reports.memory_table import clear_caches

    models, methods = builtin_names()
    traced = [0.0]
    untimed = memory.peak_training_bytes

    def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        begin = time.perf_counter()
        try:
            return untimed(*args, **kwargs)
        finally:
            traced[0] += time.perf_counter() - begin

    memory.peak_training_bytes = timed

    def sweep() -> tuple[float, float]:
        traced[0] = 0.0
        begin = time.perf_counter()
        memory_sweep(models, methods, jobs=1)  # in this process: it times the traces here
        return time.perf_counter() - begin, traced[0]

    first, first_traces = sweep()
    memory._SHARED_CACHE.clear()
    clear_caches()
    warm, warm_traces = sweep()
    print(f"imports: torch {torch_s:.2f} s, symbolic_shapes/sympy {sympy_s:.2f} s, torch._dynamo {compiler_s:.2f} s")
    print(f"first sweep {first:.2f} s (traces {first_traces:.2f} s); the same sweep with every meta kernel warm "
          f"{warm:.2f} s (traces {warm_traces:.2f} s, the rest {warm - warm_traces:.2f} s)")


if __name__ == "__main__":
    main()
