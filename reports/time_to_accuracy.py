"""Time to accuracy: how long each method takes to first reach a target test accuracy.

The figure of merit of the selection baselines (TiFL, Oort): not where a run ends, but when it
gets there, in simulated device time (the
virtual clock's ``clock/total_s``, which charges each round its slowest selected device) and in
rounds. A run reaches the target at its first evaluation at or above it, so the resolution is
the run's evaluation interval (``eval_every``); evaluations that end no
cycle of the method are left out, as everywhere in the reports. The paper's "speed-up of up to
1.9× over vanilla FL" is a time per round, full model over block: ``fedbench report time``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from fedbench.errors import ConfigError
from fedbench.reports.summary import ACCURACY, VIRTUAL_TIME, Stat, ignores_memory_by_label
from fedbench.reports.tables import MISSING, NOT_APPLICABLE, Cell, Table, column_order, method_order

COLUMN_KEYS = ("dataset", "partition_label", "model")


def check_target(target: float) -> None:
    if not 0 < target <= 1:
        hint = f" (for {target:g} %, give {target / 100:g})" if 1 < target <= 100 else ""
        raise ConfigError(f"--target ({target:g}) must be an accuracy in (0, 1], e.g. 0.75{hint}")


@dataclass(frozen=True)
class Reached:
    """When one run first reached the target: its 1-based round and simulated seconds (NaN where
    the run logged no clock), or ``None`` for both where it never did (``best`` says how close)."""

    round: int | None
    seconds: float
    best: float


def first_reach(mine: pd.DataFrame, target: float) -> Reached:
    """The first evaluation in one run's history (long format: ``run_id, key, round, value``)
    with accuracy >= ``target``, and the virtual clock at that round."""
    accuracy = mine[mine["key"] == ACCURACY].sort_values("round")
    best = float(accuracy["value"].max()) if not accuracy.empty else math.nan
    hits = accuracy[accuracy["value"] >= target]
    if hits.empty:
        return Reached(None, math.nan, best)
    round_idx = int(hits["round"].iloc[0])
    clock = mine[(mine["key"] == VIRTUAL_TIME) & (mine["round"] == round_idx)]["value"]
    return Reached(round_idx + 1, float(clock.iloc[-1]) if not clock.empty else math.nan, best)


@dataclass(frozen=True)
class Group:
    """The seeds of one configuration in one column: how many reached, and when on average."""

    seeds: int
    reached: int
    seconds: Stat
    rounds: Stat
    best: float

    @property
    def all_reached(self) -> bool:
        return self.seeds > 0 and self.reached == self.seeds

    def text(self, speedup: float | None) -> str:
        if self.reached == 0:
            return f"not reached (best {100 * self.best:.1f})" if not math.isnan(self.best) else MISSING

        mean = self.rounds.mean
        rounds = f"{mean:.0f}" if mean == round(mean) else f"{mean:.1f}"
        parts = [f"round {rounds}" if self.seconds.missing else f"{_seconds(self.seconds)} · round {rounds}"]
        if speedup is not None:
            parts.append(f"{speedup:.2f}×")
        if not self.all_reached:
            parts.append(f"{self.reached}/{self.seeds} seeds")
        elif self.seeds > 1:
            parts.append(f"n={self.seeds}")
        return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _seconds(stat: Stat) -> str:
    """Whole seconds from 100 s up; below, three significant digits (a small fleet's rounds)."""
    def number(value: float) -> str:
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"

    return f"{number(stat.mean)} ± {number(stat.std)} s" if stat.n > 1 else f"{number(stat.mean)} s"


def group_of(reaches: Sequence[Reached]) -> Group:
    hit = [r for r in reaches if r.round is not None]
    bests = [r.best for r in reaches if not math.isnan(r.best)]
    return Group(
        seeds=len(reaches),
        reached=len(hit),
        seconds=Stat.of([r.seconds for r in hit]),
        rounds=Stat.of([float(r.round) for r in hit if r.round is not None]),
        best=max(bests) if bests else math.nan,
    )


def baseline_rows(
    labels_by_column: dict[tuple, list[str]], methods: dict[str, str], baseline: str
) -> tuple[dict[tuple, str], list[str]]:
    """Per column, the row the speed-ups divide: the row labelled ``baseline``, else the one row of
    method ``baseline`` (``fedavg`` finds ``fedavg (rounds=8)`` when it is the only FedAvg row
    there). Warnings where a column has several candidates or no column has any."""
    chosen: dict[tuple, str] = {}
    warnings = []
    for column, labels in labels_by_column.items():
        exact = [label for label in labels if label == baseline]
        candidates = exact or [label for label in labels if methods.get(label) == baseline]
        if len(candidates) == 1:
            chosen[column] = candidates[0]
        elif candidates:
            warnings.append(f"{len(candidates)} rows of {baseline} in {' '.join(map(str, column))} "
                            f"({'; '.join(candidates)}): no speed-ups there; name one with --baseline 'LABEL'")
    if not chosen and not warnings:
        rows = sorted({label for labels in labels_by_column.values() for label in labels})
        warnings.append(f"no row is {baseline!r}, so no speed-ups are shown; --baseline takes a row: {'; '.join(rows)}")
    return chosen, warnings


def time_to_accuracy(
    summary: pd.DataFrame, history: pd.DataFrame, target: float, baseline: str | None = "fedavg"
) -> tuple[Table, list[str]]:
    """Methods × (data set, partition, model): the simulated time and round at which each
    configuration's seeds first reached ``target``, and warnings. Where the ``baseline`` row
    (:func:`baseline_rows`) reached it with every seed in a column, each other row that did too
    shows its speed-up, the baseline's time over its own (rounds where no clock was logged).
    Bold: the fastest row reached by all its seeds in each column."""
    check_target(target)
    if summary.empty:
        raise ConfigError("no finished runs to tabulate; run some first (fedbench run / fedbench sweep)")
    groups: dict[tuple, Group] = {}
    no_device: set[tuple] = set()  # PR 0: no device could train the method there, the paper's NA
    by_run = dict(tuple(history.groupby("run_id")))
    for keys, runs in summary.groupby(["method_label", *COLUMN_KEYS], sort=True, dropna=False):
        groups[keys] = group_of([first_reach(by_run.get(r, history.iloc[:0]), target) for r in runs["run_id"]])
        if runs["pr"].eq(0).all():
            no_device.add(keys)
    columns = sorted({k[1:] for k in groups}, key=column_order)
    methods = method_order([k[0] for k in groups])
    labels_by_column = {column: [k[0] for k in groups if k[1:] == column] for column in columns}
    method_of = dict(zip(summary["method_label"], summary["method"], strict=True))
    bases, warnings = baseline_rows(labels_by_column, method_of, baseline) if baseline else ({}, [])

    def cost(group: Group) -> float:
        return group.seconds.mean if not group.seconds.missing else group.rounds.mean

    rows = []
    for method in methods:
        cells = [Cell(method)]
        for column in columns:
            group = groups.get((method, *column))
            if group is None or (method, *column) in no_device:
                cells.append(Cell(MISSING if group is None else NOT_APPLICABLE))
                continue
            base = groups.get((bases[column], *column)) if column in bases else None
            speedup = None
            if base is not None and base.all_reached and group.all_reached and method != bases[column]:
                same_unit = base.seconds.missing == group.seconds.missing
                speedup = cost(base) / cost(group) if same_unit and cost(group) > 0 else None
            cells.append(Cell(group.text(speedup), value=cost(group) if group.all_reached else math.nan))
        rows.append(cells)
    # Bold: the fastest row whose every seed got there, among methods that respect memory budgets (a
    # reference that trains every device whatever its memory, vanilla FedAvg, is no candidate).
    ignores = ignores_memory_by_label(summary)
    candidates = [row for row, method in zip(rows, methods, strict=True) if not ignores.get(method)]
    for j in range(1, len(columns) + 1):
        values = [row[j].value for row in candidates if not math.isnan(row[j].value)]
        for row in candidates:
            if values and row[j].value == min(values):
                row[j] = Cell(row[j].text, bold=True, value=row[j].value)
    header = ("Method", *(" ".join(map(str, c)) for c in columns))
    title = (f"Time to {100 * target:.10g} % test accuracy: simulated time and round of the first evaluation "
             "at or above it")
    note = (
        "Simulated time: the virtual clock (`clock/total_s`) at that round (the round alone for runs that "
        "logged no clock); mean ± sample std over the seeds that reached the target, with how many did where "
        "not all; the round is 1-based and as fine as the run's evaluations (`eval_every`). "
        + (f"×: speed-up over {' / '.join(sorted(set(bases.values())))}, its time over the row's, where every "
           "seed of both got there. " if bases else "")
        + "Bold: the fastest configuration every seed of which got there, among those that respect memory "
        f"budgets; {MISSING}: not run; "
        f"{NOT_APPLICABLE}: PR 0, the method cannot run."
    )
    keys = (None, *({"metric": "time_to_accuracy", **dict(zip(COLUMN_KEYS, map(str, c), strict=True))}
                    for c in columns))
    return Table(title, header, tuple(tuple(r) for r in rows), note, keys), warnings
