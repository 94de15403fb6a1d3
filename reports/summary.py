"""Tidy per-run summaries and per-cell aggregates: the numbers every table and figure shows.

Pure functions of the frames :mod:`fedbench.reports.runs` reads, so they are
tested on hand-made frames. Accuracies stay fractions here (0..1); the
renderers turn them into percentages.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from fedbench.errors import ConfigError

log = logging.getLogger(__name__)

ACCURACY = "eval/accuracy"
PARTICIPATION = "participation/rate"
VIRTUAL_TIME = "clock/total_s"

# Final accuracy = mean of the last this many evaluations of a run (``--last``).
DEFAULT_LAST_EVALS = 3

# Summary columns, in order; ``options.*`` columns of the runs follow them.
SUMMARY_COLUMNS = (
    "run_id", "method", "method_label", "dataset", "model", "partition", "alpha", "partition_label", "seed",
    "final_accuracy", "best_accuracy", "pr", "rounds", "virtual_time_s",
)
GROUP_KEYS = ("method_label", "dataset", "model", "partition_label")


def partition_label(partition: str, alpha: str | float | None) -> str:
    """``IID`` for the iid partitioner, ``non-IID α=<alpha>`` for Dirichlet, the partitioner's name otherwise."""
    if partition == "iid":
        return "IID"
    if partition == "dirichlet":
        return f"non-IID α={_short_number(alpha)}"
    return partition or "?"


def method_label(method: str, options: dict[str, str]) -> str:
    """``neulite (co_adaptation=False)``: the method's name and the given option values."""
    if not options:
        return method
    settings = ", ".join(f"{key.removeprefix('options.')}={value}" for key, value in sorted(options.items()))
    return f"{method} ({settings})"


def method_labels(frame: pd.DataFrame, option_columns: Sequence[str]) -> list[str]:
    """Per run, the method plus those of its logged options that differ between that method's
    runs (an option a run did not log is its default and not shown): runs with other options
    are other rows, never averaged together as seeds."""
    labels = []
    for _, row in frame.iterrows():
        same_method = frame[frame["method"] == row["method"]]
        varying = [c for c in option_columns if same_method[c].astype(str).nunique(dropna=False) > 1]
        labels.append(method_label(row["method"], {c: row[c] for c in varying if isinstance(row[c], str)}))
    return labels


def is_iid(label: str) -> bool:
    return label == "IID"


def _short_number(value: str | float | None) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _column(frame: pd.DataFrame, name: str, default: object = None) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series([default] * len(frame), index=frame.index)


def finished_runs(runs: pd.DataFrame, experiment: str) -> tuple[pd.DataFrame, list[str]]:
    """The FINISHED runs, one per run key (the latest): re-running a config replaces its
    result instead of counting it twice; and a warning if others were skipped. No finished
    run is a :class:`ConfigError`."""
    done = runs[runs["status"] == "FINISHED"] if "status" in runs.columns else runs.iloc[0:0]
    if done.empty:
        statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items()) if len(runs) else "none"
        raise ConfigError(
            f"experiment '{experiment}' has no finished runs (runs: {statuses}); "
            "run 'fedbench run --experiment " + experiment + "' first"
        )
    skipped = len(runs) - len(done)
    warnings = [f"skipping {skipped} unfinished run(s) of experiment '{experiment}'"] if skipped else []
    keys = _column(done, "tags.fedbench.run_key").fillna(done["run_id"])
    latest = done.assign(_key=keys).sort_values("start_time").groupby("_key", sort=False).tail(1)
    return latest.drop(columns="_key").sort_values("start_time").reset_index(drop=True), warnings


def summarize(
    runs: pd.DataFrame, history: pd.DataFrame, last_evals: int = DEFAULT_LAST_EVALS
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run (:data:`SUMMARY_COLUMNS` + ``options.*``) and a list of warnings
    naming each run whose metrics are missing (its cells are left out, the rest renders).

    ``history`` is the long frame of ``eval/accuracy`` values (``run_id, key, round, value``).
    Final accuracy is the mean of the last ``last_evals`` evaluations, best the maximum.
    """
    if last_evals < 1:
        raise ConfigError(f"--last ({last_evals}) must be >= 1 (the evaluations averaged into final accuracy)")
    accuracy = history[history["key"] == ACCURACY].sort_values("round")
    by_run = {run_id: group["value"].tolist() for run_id, group in accuracy.groupby("run_id")}
    rows, warnings = [], []
    for _, run in runs.iterrows():
        values = by_run.get(run["run_id"], [])
        row = {
            "run_id": run["run_id"],
            "method": run.get("tags.fedbench.method") or run.get("params.method"),
            "dataset": run.get("tags.fedbench.dataset") or run.get("params.data.dataset"),
            "model": run.get("tags.fedbench.model") or run.get("params.model.name"),
            "partition": run.get("params.data.partition"),
            "alpha": run.get("params.data.alpha"),
            "seed": run.get("params.seed"),
            "final_accuracy": sum(values[-last_evals:]) / len(values[-last_evals:]) if values else math.nan,
            "best_accuracy": max(values) if values else math.nan,
            "pr": _number(run.get(f"metrics.{PARTICIPATION}")),
            "rounds": _number(run.get("params.rounds")),
            "virtual_time_s": _number(run.get(f"metrics.{VIRTUAL_TIME}")),
        }
        row["partition_label"] = partition_label(row["partition"], row["alpha"])
        options = {k.removeprefix("params."): v for k, v in run.items()
                   if str(k).startswith("params.options.") and isinstance(v, str)}
        row.update(options)
        missing = [key for key, value in ((ACCURACY, values), (PARTICIPATION, row["pr"])) if _absent(value)]
        if row["pr"] == 0:  # PR 0: the method could not train, so no accuracy is expected ("NA")
            missing = [key for key in missing if key != ACCURACY]
        if missing:
            warnings.append(
                f"run {row['run_id'][:8]} ({row['method']}, {row['dataset']}, {row['model']}) "
                f"has no {' or '.join(missing)}; its cells are left out"
            )
        rows.append(row)
    frame = pd.DataFrame(rows)
    options = sorted(c for c in frame.columns if c.startswith("options."))
    frame["method_label"] = method_labels(frame, options)
    return frame.reindex(columns=[*SUMMARY_COLUMNS, *options]), warnings


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return number


def _absent(value: object) -> bool:
    if isinstance(value, list):
        return not value
    return isinstance(value, float) and math.isnan(value)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) over ``n`` seeds; ``n == 0`` means no value."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        clean = [v for v in values if not math.isnan(v)]
        if not clean:
            return cls(math.nan, math.nan, 0)
        mean = sum(clean) / len(clean)
        std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
        return cls(mean, std, len(clean))

    @property
    def missing(self) -> bool:
        return self.n == 0


def aggregate(summary: pd.DataFrame, keys: Sequence[str] = GROUP_KEYS) -> pd.DataFrame:
    """One row per ``keys`` group: :class:`Stat` of final accuracy, best accuracy and PR over its runs (seeds)."""
    rows = []
    for group, runs in summary.groupby(list(keys), sort=True, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        row["final"] = Stat.of(runs["final_accuracy"].tolist())
        row["best"] = Stat.of(runs["best_accuracy"].tolist())
        row["pr"] = Stat.of(runs["pr"].tolist())
        row["runs"] = len(runs)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "final", "best", "pr", "runs"])
