"""Per-client overhead at 100, 1,000 and 10,000 clients, and the fixed costs of a run.

Each run is a fresh ``fedbench run`` process on W (the real command line, MLflow logging into a
temporary store, a checkpoint after every round) so that start-up and peak RSS are those a user
sees. See ``harness.py`` for the timers patched into the child.

* per-client overhead = (steady round wall time − evaluation − time inside the SGD loop)
  ÷ clients per round; goal <= 10 ms. Peak RSS should not grow with the client count (goal:
  within 5 % of the 100-client run).
* start-up = process start to the end of round 1, minus one steady round; goal <= 3 s. Every
  run below is a machine's first (fresh MLflow store, empty trace cache); ``warm_store_startup_s``
  measures later runs.
* peak RSS of the W run; goal <= 1.5 GiB.
* 10 rounds of W end to end (process start to exit) over the plain loop's; goal <= 1.15.
* ``fedbench --help``; goal < 1 s.

    python benchmarks/bench_scale.py                     # prints the figures
    nox -s bench -- benchmarks/bench_scale.py            # pytest-benchmark JSON
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile

from harness import MIB, WORKLOAD, ChildResult, command_seconds, run_child, steady


def per_client_figures(child: ChildResult) -> dict[str, float]:
    """The per-client overhead figures of one ``fedbench`` child run."""
    rep = child.report
    overhead = [w - e - s for w, e, s in zip(rep["round_wall_s"], rep["eval_s"], rep["sgd_s"], strict=True)]
    return {
        "clients": rep["clients"],
        "steady_round_s": steady(rep["round_wall_s"]),
        "eval_s": steady(rep["eval_s"]),
        "sgd_s": steady(rep["sgd_s"]),
        "per_client_overhead_ms": 1000 * steady(overhead) / WORKLOAD["clients_per_round"],
        "peak_rss_mib": child.peak_rss_bytes / MIB,
        # round 1 ends when it is logged (the run's MLflow store may still be opening before then)
        "startup_s": rep["round_logged_since_start_s"][0] - steady(rep["round_wall_s"]),
        "wall_s": child.wall_s,
    }


def startup_phases(child: ChildResult) -> dict[str, float]:
    """Where a run's start-up went: when torch was in, round 1's meta traces, the wait for MLflow's
    helper to create the run (``start_end_s`` is when the run existed), and round 1's end."""
    rep = child.report
    return {**rep["startup_phases"], "round_1_end_s": rep["round_end_since_start_s"][0],
            "round_1_logged_s": rep["round_logged_since_start_s"][0]}


def fixed_figures(fedbench_run: ChildResult, plain_run: ChildResult) -> dict[str, float]:
    figures = per_client_figures(fedbench_run)
    return {
        "startup_s": figures["startup_s"],
        "steady_round_s": figures["steady_round_s"],
        "peak_rss_mib": figures["peak_rss_mib"],
        "end_to_end_fedbench_s": fedbench_run.wall_s,
        "end_to_end_plain_s": plain_run.wall_s,
        "end_to_end_ratio": fedbench_run.wall_s / plain_run.wall_s,
        "plain_peak_rss_mib": plain_run.peak_rss_bytes / MIB,
    }


def help_seconds(repeats: int = 3) -> float:
    """Median wall time of ``fedbench --help`` in a fresh process."""
    exe = shutil.which("fedbench") or sys.exit("fedbench is not on PATH; pip install -e . first")
    return statistics.median(command_seconds([exe, "--help"]) for _ in range(repeats))


# ------------------------------------------------------------ pytest-benchmark
def test_per_client_overhead(benchmark, num_clients, bench_scale_rounds):
    """Issue 13 figure 2, one client count per test (compare peak_rss_mib across them)."""
    child = benchmark.pedantic(
        run_child, args=(["fedbench", "--clients", str(num_clients), "--rounds", str(bench_scale_rounds)],),
        rounds=1, iterations=1,
    )
    benchmark.extra_info.update({k: round(v, 4) for k, v in per_client_figures(child).items()})
    benchmark.extra_info["goal_per_client_overhead_ms"] = 10.0


def test_fixed_costs(benchmark, bench_rounds):
    """Issue 13 figure 3: start-up, peak RSS, end to end against the plain loop (side by side)."""
    plain = run_child(["plain", "--rounds", str(bench_rounds)])
    child = benchmark.pedantic(run_child, args=(["fedbench", "--rounds", str(bench_rounds)],), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 4) for k, v in fixed_figures(child, plain).items()})
    benchmark.extra_info["startup_phases"] = startup_phases(child)
    benchmark.extra_info.update({"goal_startup_s": 3.0, "goal_peak_rss_mib": 1536.0, "goal_end_to_end_ratio": 1.15})
    benchmark.extra_info.update({k: round(v, 4) for k, v in warm_store_startup_s().items()})


def test_help_seconds(benchmark):
    exe = shutil.which("fedbench")
    assert exe, "fedbench is not on PATH; pip install -e . first"
    benchmark.pedantic(command_seconds, args=([exe, "--help"],), rounds=3, iterations=1)
    benchmark.extra_info["goal_s"] = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the end-to-end comparison")
    parser.add_argument("--scale-rounds", type=int, default=4)
    parser.add_argument("--clients", default="100,1000,10000")
    args = parser.parse_args()
    print(f"fedbench --help: {help_seconds():.2f} s")
    for count in [int(c) for c in args.clients.split(",")]:
        run = run_child(["fedbench", "--clients", str(count), "--rounds", str(args.scale_rounds)])
        print({k: round(v, 3) for k, v in per_client_figures(run).items()}, flush=True)
    plain = run_child(["plain", "--rounds", str(args.rounds)])
    fedbench_run = run_child(["fedbench", "--rounds", str(args.rounds)])
    print({k: round(v, 3) for k, v in fixed_figures(fedbench_run, plain).items()})
    print("start-up phases of that run (s since process start):", startup_phases(fedbench_run))
    print("start-up of later runs:", {k: round(v, 3) for k, v in warm_store_startup_s().items()})


def warm_store_startup_s(rounds: int = 3) -> dict[str, float]:
    """Start-up of a user's later runs: the figure above is a machine's first run (a fresh SQLite
    store, whose schema MLflow creates first, and no trace cached). A first run creates the store
    and the trace cache; then the same configuration again (``existing_store_cached_traces_s``,
    no meta trace at all, so torch's compiler is never imported) and one whose sub-models are not
    cached yet (``existing_store_cold_traces_s``, e.g. a new model)."""
    with tempfile.TemporaryDirectory(prefix="fedbench-store-") as folder:
        os.environ["FEDBENCH_BENCH_STORE"] = f"sqlite:///{folder}/mlflow.db"
        traces = os.path.join(folder, "traces")
        try:
            run_child(["fedbench", "--rounds", "1"], trace_cache=traces)  # creates the store and the traces
            measured = {}
            for name, cache in (("existing_store_cached_traces_s", traces), ("existing_store_cold_traces_s", None)):
                run = run_child(["fedbench", "--rounds", str(rounds)], trace_cache=cache)
                measured[name] = per_client_figures(run)["startup_s"]
            return measured
        finally:
            del os.environ["FEDBENCH_BENCH_STORE"]

if __name__ == "__main__":
    main()
