"""Run several methods on one shared setting and write one JSON line per run — no MLflow needed.

    python benchmarks/accuracy_grid.py --methods fedavg,allsmall,heterofl \\
        --set model.name=resnet18 --set model.width=1.0 --set data.dataset=fashion-mnist \\
        --set rounds=30 --set device=cuda --out runs.jsonl

With ``--checkpoint-dir DIR --stop-after SECONDS`` a grid longer than one sitting stops in time,
checkpointed, and the same command continues it later (on another machine too, if DIR travels):

    python benchmarks/accuracy_grid.py --methods neulite,fedavg --set rounds=400 --set device=cuda \
        --checkpoint-dir runs/ckpt --stop-after 540 --out runs/long.jsonl

For machines where MLflow is not installed (a lent GPU box, a cluster node), and for
the acceptance tables in docs/width-baselines.md and docs/depth-baselines.md: each
line holds the run's settings, its final and best accuracy, its participation rate,
its simulated time (the virtual clock) and its measured wall time per round, plus the
last evaluation round's metrics (DepthFL's exits, NeuLite's stages). Runs go one
after the other in this process; a failing run is written as ``{"error": ...}`` and
the next one starts. ``fedbench run`` and ``fedbench sweep`` are the tracked way to
do the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from fedbench import engine
from fedbench.config import dotted_to_nested, make_config


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values read as YAML: numbers, booleans, lists) into dotted overrides."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: expected key=value, e.g. --set model.width=0.5")
        found[key] = yaml.safe_load(value)
    return found


def summarize(result: engine.RunResult, wall_s: float) -> dict[str, Any]:
    accuracy = result.metric("eval/accuracy")
    last_eval = next((r.metrics for r in reversed(result.rounds) if "eval/accuracy" in r.metrics), {})
    return {
        "final_accuracy": accuracy[-1] if accuracy else None,
        "best_accuracy": max(accuracy) if accuracy else None,
        "accuracy_curve": accuracy,
        "participation_rate": result.rounds[-1].metrics.get("participation/rate"),
        "simulated_s": result.rounds[-1].metrics.get("clock/total_s"),
        "round_s_mean": statistics.fmean(result.metric("time/round_s")),
        "train_s_mean": statistics.fmean(result.metric("time/train_s")),
        "wall_s": wall_s,
        "rounds_reached": len(result.rounds),
        "stopped": result.stopped,
        "continued_from_round": result.first_round,
        "last_eval": last_eval,
    }


def progress(method: str, finished: engine.RoundResult, start: float) -> None:
    """One line per evaluation round, so a run cut short still shows its pace and its curve."""
    if "eval/accuracy" in finished.metrics:
        print(f"  {method} round {finished.round_idx + 1}: accuracy {finished.metrics['eval/accuracy']:.4f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", required=True, help="comma-separated method names")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run-config override, dotted (repeatable), e.g. model.width=0.5")
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file to append to")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="checkpoint each run to DIR/<method>-<run key>.ckpt and continue from it if present")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS",
                        help="stop (checkpointed, with --checkpoint-dir) once the grid has run this long, the "
                             "time shared by the methods; the next invocation continues each")
    args = parser.parse_args(argv)
    base = parse_sets(args.set)
    failures = 0
    grid_start = time.perf_counter()
    methods = args.methods.split(",")
    for position, method in enumerate(methods):
        settings = {**base, "method": method}
        start = time.perf_counter()
        # The time left is shared by the methods still to run, so all of them advance each sitting.
        left = None if args.stop_after is None else (args.stop_after - (start - grid_start)) / (len(methods) - position)
        if left is not None and left <= 0:
            print(f"{method}: not started, --stop-after {args.stop_after:g} s has passed", flush=True)
            continue
        try:
            config = make_config(None, dotted_to_nested(settings))
            where = None if args.checkpoint_dir is None else args.checkpoint_dir / f"{method}-{config.run_key}.ckpt"
            result = engine.run(config, on_round=lambda r, m=method, t=start: progress(m, r, t),
                                checkpoint_file=where, stop_after_s=left)
            line: dict[str, Any] = {"method": method, "settings": settings,
                                    **summarize(result, time.perf_counter() - start)}
        except Exception as exc:  # keep going: one broken method must not cost the others' results
            failures += 1
            line = {"method": method, "settings": settings, "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:]}
        with args.out.open("a") as handle:
            handle.write(json.dumps(line) + "\n")
        shown = line.get("final_accuracy")
        print(f"{method}: " + (f"final {shown:.4f}, best {line['best_accuracy']:.4f}, "
                               f"{line['round_s_mean']:.2f} s/round, wall {line['wall_s']:.0f} s"
                               if shown is not None else line.get("error", "no evaluation")), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
