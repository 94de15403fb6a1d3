"""Two sets of accuracy_grid.py lines side by side, per method: the same runs made two ways.

    python benchmarks/compare_runs.py OUT/smoke.jsonl OUT/smoke_graphs.jsonl --names eager,graphs

Used by step 2g of benchmarks/cuda_checks.sh to hold every method's CUDA-graphed smoke run to its
eager one: both train the same clients on the same samples, so their accuracy and last training
loss may differ only by GPU non-determinism. A row is flagged when they differ by more than
``--tolerance`` (absolute accuracy, relative loss), or when a run is missing or failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def read_runs(path: Path) -> dict[str, dict[str, Any]]:
    """A file's runs by method; the last line of a method wins (a rerun appends)."""
    runs: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                run = json.loads(line)
                runs[run["method"]] = run
    return runs


def _loss(run: dict[str, Any]) -> float | None:
    return (run.get("last_eval") or {}).get("train/loss")


def _shown(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def compare(first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]], names: tuple[str, str],
            tolerance: float) -> tuple[list[str], int]:
    """Markdown rows comparing the two sets, and the number of flagged rows."""
    a, b = names
    rows = [f"| method | accuracy {a} | accuracy {b} | train loss {a} | train loss {b} | verdict |",
            "|---|---|---|---|---|---|"]
    flagged = 0
    for method in sorted(set(first) | set(second)):
        one, two = first.get(method), second.get(method)
        failed = [f"{n}: {r.get('error', 'missing') if r else 'missing'}" for n, r in ((a, one), (b, two))
                  if not r or "error" in r]
        if failed:
            flagged += 1
            rows.append(f"| {method} | | | | | **{'; '.join(failed)}** |")
            continue
        acc_a, acc_b, loss_a, loss_b = one["final_accuracy"], two["final_accuracy"], _loss(one), _loss(two)
        close = abs(acc_a - acc_b) <= tolerance and (
            loss_a is None or loss_b is None or abs(loss_a - loss_b) <= tolerance * max(abs(loss_a), 1e-12))
        flagged += not close
        verdict = "same up to the tolerance" if close else f"**differ by more than {tolerance}**"
        rows.append(f"| {method} | {acc_a:.4f} | {acc_b:.4f} | {_shown(loss_a)} | {_shown(loss_b)} | {verdict} |")
    return rows, flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--names", default="first,second", help="the two columns' names, comma-separated")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args(argv)
    names = tuple(args.names.split(",", 1))
    if len(names) != 2:
        parser.error("--names needs two names, e.g. eager,graphs")
    rows, flagged = compare(read_runs(args.first), read_runs(args.second), names, args.tolerance)  # type: ignore[arg-type]
    print("\n".join(rows))
    print(f"\n{flagged} of {len(rows) - 2} methods flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
