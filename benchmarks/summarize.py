"""The issue-13 results table (Markdown) from a pytest-benchmark JSON file.

    python benchmarks/summarize.py .benchmarks/results.json

Reads the ``extra_info`` each benchmark records and sets every figure next to its goal; a
figure whose benchmark did not run is left out. The machine line comes from the JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b.get("extra_info", {}) | {"mean_s": b["stats"]["mean"]} for b in data["benchmarks"]}


def rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, goal, measured) rows."""
    found, out = _by_name(data), []
    overhead = found.get("test_engine_overhead")
    if overhead:
        out.append(("1. engine overhead, steady round (fedbench ÷ plain loop)", "≤ 1.05",
                     f"{overhead['ratio_round']:.3f} (train {overhead['fb_train']:.2f}/{overhead['plain_train']:.2f} s "
                     f"= {overhead['ratio_train']:.3f}; eval {overhead['fb_eval']:.2f}/{overhead['plain_eval']:.2f} s "
                     f"= {overhead['ratio_eval']:.3f})"))
    scale = sorted((v for k, v in found.items() if k.startswith("test_per_client_overhead")), key=lambda v: v["clients"])
    for item in scale:
        out.append((f"2. per-client overhead, {item['clients']:,} clients", "≤ 10 ms",
                     f"{item['per_client_overhead_ms']:.1f} ms (round {item['steady_round_s']:.2f} s, eval "
                     f"{item['eval_s']:.2f} s, SGD {item['sgd_s']:.2f} s; peak RSS {item['peak_rss_mib']:.0f} MiB)"))
    if len(scale) > 1:
        base = scale[0]["peak_rss_mib"]
        spread = max(abs(i["peak_rss_mib"] - base) / base for i in scale[1:])
        out.append((f"2. peak RSS vs clients ({scale[0]['clients']:,} → {scale[-1]['clients']:,})", "within 5 %",
                     f"{100 * spread:+.1f} % largest change"))
    fixed = found.get("test_fixed_costs")
    if fixed:
        out += [
            ("3. start-up (process start → end of round 1 − one steady round)", "≤ 3 s",
             f"{fixed['startup_s']:.2f} s (a machine's first run)"
             + (f"; later runs {fixed['existing_store_cached_traces_s']:.2f} s (same configuration), "
                f"{fixed['existing_store_cold_traces_s']:.2f} s (new sub-models)"
                if "existing_store_cached_traces_s" in fixed else "")),
            *([("3. where that first run's start-up went", "",
                "; ".join(f"{k.removesuffix('_s').lstrip('_')} {v:.2f} s" for k, v in fixed["startup_phases"].items()))]
              if "startup_phases" in fixed else []),
            ("3. peak RSS of a W run", "≤ 1.5 GiB", f"{fixed['peak_rss_mib']:.0f} MiB"),
            ("3. W end to end (fedbench run ÷ plain loop)", "≤ 1.15",
             f"{fixed['end_to_end_ratio']:.3f} ({fixed['end_to_end_fedbench_s']:.1f} s / {fixed['end_to_end_plain_s']:.1f} s)"),
        ]
    if "test_help_seconds" in found:
        out.append(("3. `fedbench --help`", "< 1 s", f"{found['test_help_seconds']['mean_s']:.2f} s"))
    memory = found.get("test_memory_model_speed")
    if memory:
        out.append((f"4. `fedbench memory`, {memory['models']} models × {memory['methods']} methods "
                    f"({memory['rows']} rows)", "< 5 s; cached < 0.1 s",
                    f"{memory['cold_s']:.1f} s; cached {memory['cached_s']:.3f} s"
                    + (f"; next process {memory['next_process_s']:.1f} s" if "next_process_s" in memory else "")
                    + (f"; in one process (--jobs 1) {memory['serial_cold_s']:.1f} s, next {memory['serial_next_process_s']:.1f} s"
                       if "serial_cold_s" in memory else "")
                    + (f"; the whole `fedbench memory --model all --method all` command {memory['command_s']:.1f} s "
                       f"(--jobs 1: {memory['serial_command_s']:.1f} s)" if "command_s" in memory else "")))
    methods = {k.split("[", 1)[1].rstrip("]"): v for k, v in found.items() if k.startswith("test_method_round_cost[")}
    if "fedavg" in methods:
        base = methods["fedavg"]["round_s"]
        for name, item in sorted(methods.items()):
            out.append((f"5. one round of {name} ÷ FedAvg", "—",
                         f"{item['round_s'] / base:.2f} (train {item['train_s']:.2f} s, eval {item['eval_s']:.2f} s, "
                         f"{item['clients']:.0f} clients)"))
    return out


def machine_line(data: dict[str, Any]) -> str:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    return (f"{cpu.get('brand_raw', info.get('processor', '?'))}, {cpu.get('count', '?')} logical CPUs, "
            f"Python {info.get('python_version', '?')}, {data.get('datetime', '')[:10]}")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/summarize.py RESULTS.json")
    data = json.loads(Path(sys.argv[1]).read_text())
    print(f"Machine: {machine_line(data)}\n")
    print("| figure | goal | measured |\n|---|---|---|")
    for figure, goal, measured in rows(data):
        print(f"| {figure} | {goal} | {measured} |")


if __name__ == "__main__":
    main()
