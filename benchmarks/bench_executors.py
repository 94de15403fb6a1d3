"""Executors on one machine: the same run serially, in worker processes and in Ray actors.

Issue 12's acceptance run: fedavg, Fashion-MNIST, cnn, 100 clients (Dirichlet alpha 0.5),
10 per round, 1 local epoch, 10 rounds. Each variant runs in a fresh subprocess; this script
samples the memory of that process and all its descendants (worker processes, Ray's
raylet/GCS/actors) from /proc and reports the peak of their sum, both RSS (shared library pages
counted once per process; ``statm``, every 0.2 s) and PSS (shared pages split between the
processes; ``smaps_rollup``, every 2 s). Reading ``smaps_rollup`` walks a process's page tables
under its memory lock — 17 ms for one 1 GB run here — so sampling it every 0.2 s took a third of
a core from a 3-process variant and made it look 3-5 % slower than it is.

    python benchmarks/bench_executors.py                     # table, then the rows as JSON
    python benchmarks/bench_executors.py --rounds 3 --variants serial-2t process-2x1

Variants: ``serial-2t`` (serial, 2 torch threads), ``serial-1t`` (serial, 1 thread per local
update: the numerics of the 2 x 1 variants), ``process-2x1`` (2 worker processes x 1 thread),
``ray-2x1`` (2 Ray actors x 1 thread, local Ray started by the run). Metrics are compared
bit for bit (float hex) with the first variant of the same per-update thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "serial-2t": {"executor": "serial", "threads": 2},
    "serial-1t": {"executor": "serial", "threads": 2, "executor_threads": 1},
    "process-2x1": {"executor": "process", "threads": 2, "workers": 2, "executor_threads": 1},
    "ray-2x1": {"executor": "ray", "threads": 2, "workers": 2, "executor_threads": 1},
}
WORKLOAD = {
    "method": "fedavg",
    "data": {"dataset": "fashion-mnist", "partition": "dirichlet", "alpha": 0.5, "num_clients": 100},
    "model": {"name": "cnn"},
    "train": {"local_epochs": 1},
    "clients_per_round": 10,
    "tracking": {"enabled": False},
}


def run_one(overrides_json: str, out_path: str) -> None:
    """In the subprocess: one run; per-round metrics (as float hex) and timings to ``out_path``."""
    from fedbench.config import make_config
    from fedbench.execution.worker_start import start_early

    config = make_config(overrides=json.loads(overrides_json))
    if config.executor == "process":  # as `fedbench run` does, before torch is imported
        start_early()
    from fedbench import engine

    start = time.perf_counter()
    result = engine.run(config)
    run_s = time.perf_counter() - start
    rounds = [{k: float(v).hex() for k, v in r.metrics.items() if not k.startswith("time/")} for r in result.rounds]
    Path(out_path).write_text(json.dumps({
        "run_s": run_s,
        "train_s": sum(r.metrics["time/train_s"] for r in result.rounds),
        # preparing the run and waiting for workers before round 1, closing them after the last
        "outside_rounds_s": run_s - sum(r.metrics["time/round_s"] for r in result.rounds),
        "rounds": rounds,
    }))


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _rss_kib(pids: list[int]) -> int:
    """Summed RSS in KiB of ``pids`` (cheap: ``statm``; processes that ended meanwhile count 0)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
        except (OSError, IndexError, ValueError):
            continue
    return total


def _pss_kib(pids: list[int]) -> int:
    """Summed PSS in KiB of ``pids`` (costly: ``smaps_rollup``, see the module docstring)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def measure(name: str, rounds: int, out_dir: Path) -> dict:
    overrides = {**WORKLOAD, **VARIANTS[name], "rounds": rounds}
    out = out_dir / f"{name}.json"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--run-one", json.dumps(overrides), str(out)])
    peak_rss = peak_pss = 0
    samples = 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        peak_rss = max(peak_rss, _rss_kib(pids))
        if samples % 10 == 0:
            peak_pss = max(peak_pss, _pss_kib(pids))
        samples += 1
        time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    found = json.loads(out.read_text())
    return {"variant": name, "wall_s": wall, "run_s": found["run_s"], "train_s": found["train_s"],
            "outside_rounds_s": found["outside_rounds_s"],
            "peak_rss_mib": peak_rss / 1024, "peak_pss_mib": peak_pss / 1024, "rounds": found["rounds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--run-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        run_one(*args.run_one)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, args.rounds, Path(tmp)) for name in args.variants]
    reference: dict[int, dict] = {}
    for row in results:
        threads = VARIANTS[row["variant"]].get("executor_threads", VARIANTS[row["variant"]]["threads"])
        first = reference.setdefault(threads, row)
        row["identical_to"] = first["variant"] if row["rounds"] == first["rounds"] else None
        final = row["rounds"][-1]
        row["final_accuracy"] = float.fromhex(final["eval/accuracy"])
        row["final_train_loss"] = float.fromhex(final["train/loss"])
    print(f"{'variant':13} {'wall s':>7} {'train s':>8} {'outside rounds s':>16} {'peak RSS MiB':>13} {'peak PSS MiB':>13} "
          f"{'final acc':>10} {'train loss':>18}  bit-identical to")
    for row in results:
        print(f"{row['variant']:13} {row['wall_s']:7.1f} {row['train_s']:8.1f} {row['outside_rounds_s']:16.2f} "
              f"{row['peak_rss_mib']:13.0f} "
              f"{row['peak_pss_mib']:13.0f} {row['final_accuracy']:10.4f} {row['final_train_loss']:18.15f}  "
              f"{row['identical_to'] or 'DIFFERS'}")
    rows = json.dumps([{k: v for k, v in r.items() if k != "rounds"} for r in results], indent=1)
    print(rows)
    if args.json:
        Path(args.json).write_text(rows)


if __name__ == "__main__":
    main()
