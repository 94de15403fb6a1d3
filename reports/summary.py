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

from fedbench.config import EXECUTION_FIELDS, RunConfig, preset_layer
from fedbench.errors import ConfigError, FedbenchError
from fedbench.tracking import provenance

log = logging.getLogger(__name__)

ACCURACY = "eval/accuracy"
CYCLE_END = "eval/cycle_end"  # logged with every evaluation: 1 where the round ends a method's cycle
PARTICIPATION = "participation/rate"
VIRTUAL_TIME = "clock/total_s"

# Final accuracy = mean of a run's evaluations in its last this many × eval_every rounds (``--last``).
DEFAULT_LAST_EVALS = 3

# Summary columns, in order; ``options.*`` columns of the runs follow them.
SUMMARY_COLUMNS = (
    "run_id", "method", "method_label", "dataset", "model", "partition", "alpha", "partition_label", "seed",
    "final_accuracy", "best_accuracy", "pr", "rounds", "virtual_time_s", "ablation_label", "ignores_memory",
    "code_version",
)
# NeuLite's ablation switches (Fig. 8): an ablation names its bars by them, and by nothing else
# only if the runs agree on every other setting.
ABLATION_SWITCHES = frozenset({"options.curriculum_loss", "options.co_adaptation", "options.round_robin"})
GROUP_KEYS = ("method_label", "dataset", "model", "partition_label")

# Logged params (a run's flattened RunConfig) that do not change what a run measures, so runs that
# differ only in them are seeds of one configuration: the seed itself; where data and logs live
# (data.data_dir, tracking.*); where and how the arithmetic runs (threads, device and the execution
# fields outside the run key: executor, workers, executor_threads, resident, cuda_graphs,
# channels_last; at most the rounding differs); and partition.*, the partition's statistics, which
# follow from the seed.
IGNORED_SETTINGS = frozenset({"seed", "data.data_dir", "threads", "device", *EXECUTION_FIELDS})
IGNORED_PREFIXES = ("tracking.", "partition.")
# Settings that are the table's rows and columns already (method; data set, model, partition).
# α is part of the partition's column label for Dirichlet and unused by the other partitioners.
COLUMN_SETTINGS = frozenset({"method", "data.dataset", "model.name", "data.partition", "data.alpha"})


def _defaults() -> dict[str, str]:
    """Every setting's default as a logged string: a run logged before a setting existed (or by
    hand, with fewer params) ran with the default."""

    return RunConfig().flat_params()


def run_settings(run: pd.Series, defaults: dict[str, str] | None = None) -> dict[str, str | None]:
    """The settings that define what ``run`` measures, from its ``params.*`` (see
    :data:`IGNORED_SETTINGS`), without its row and column keys; a setting it did not log is its
    default, an option it did not log is ``None`` (the method's default, not known here)."""
    defaults = _defaults() if defaults is None else defaults
    logged = {str(k).removeprefix("params."): v for k, v in run.items() if str(k).startswith("params.")}
    keys = set(logged) | set(defaults)
    settings: dict[str, str | None] = {}
    for key in sorted(keys):
        if key in IGNORED_SETTINGS or key in COLUMN_SETTINGS or key.startswith(IGNORED_PREFIXES):
            continue
        value = logged.get(key)
        if not isinstance(value, str):  # absent from this run (NaN in the frame)
            value = defaults.get(key)
        settings[key] = value
    return settings


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


def method_labels(frame: pd.DataFrame, settings: Sequence[dict[str, str | None]]) -> list[str]:
    """Per run, the method plus those of its settings (:func:`run_settings`) that differ between
    that method's runs: runs of other configurations are other rows, never averaged together as
    seeds. An option a run did not log is its default and not shown."""
    methods = frame["method"].tolist()
    # Where some run of a method names a preset, its runs are told apart by preset, then by the
    # training values that differ from their preset's; elsewhere by every value that differs.
    with_preset = {m for m, s in zip(methods, settings, strict=True) if s.get("preset")}
    settings = [_without_preset_values(m, s) if m in with_preset else s for m, s in zip(methods, settings, strict=True)]
    varying: dict[str, list[str]] = {}
    for method in set(methods):
        mine = [settings[i] for i, m in enumerate(methods) if m == method]
        keys = sorted(set().union(*mine))
        varying[method] = [k for k in keys if len({s.get(k) for s in mine}) > 1]
    def named(i: int, method: str) -> list[str]:
        # Under a preset, a training value left in the settings differs from the preset's (a flag
        # changed it), so it is always named: "heterofl (preset=official, train.local_epochs=1)".
        on_preset = {k for k in settings[i] if k.startswith("train.")} if method in with_preset else set()
        return sorted(({*varying[method], *_PROTOCOL_SETTINGS} & settings[i].keys()) | on_preset)

    return [
        method_label(method, {k: settings[i][k] for k in named(i, method)
                              if settings[i].get(k) is not None
                              and (k in varying[method] or k.startswith("train.") or _off_protocol(k, settings[i][k]))})
        for i, method in enumerate(methods)
    ]


def mixed_protocol_warnings(frame: pd.DataFrame, settings: Sequence[dict[str, str | None]]) -> list[str]:
    """A line per setting in which the methods of one table column (data set, model, partition)
    ran differently and that no row label names (labels name what varies within a method): 20
    rounds of FedAvg beside 80 of NeuLite are not one protocol. Method options and, where a preset
    is in play, the training values (presets set them per method) are each method's own."""
    lines = []
    columns = list(zip(frame["dataset"], frame["model"], frame["partition_label"], strict=True))
    labelled = {k for label in frame["method_label"] for k in _label_keys(label)}
    for column in dict.fromkeys(columns):
        rows = [i for i, c in enumerate(columns) if c == column]
        methods = sorted({frame["method"].iloc[i] for i in rows})
        if len(methods) < 2:
            continue
        with_preset = any(settings[i].get("preset") for i in rows)
        keys = sorted(set().union(*(settings[i] for i in rows)))
        for key in keys:
            if key.startswith("options.") or key in labelled or (with_preset and (key.startswith("train.") or key == "preset")):
                continue
            values = {m: sorted({str(settings[i].get(key)) for i in rows if frame["method"].iloc[i] == m}) for m in methods}
            if len({v for vs in values.values() for v in vs}) > 1:
                shown = ", ".join(f"{m} {'/'.join(vs)}" for m, vs in values.items())
                lines.append(f"{' · '.join(map(str, column))}: the methods ran with different {key} ({shown}); "
                             "their rows do not share one protocol")
    return lines


def _label_keys(label: str) -> list[str]:
    inside = label.partition(" (")[2].removesuffix(")")
    return [part.split("=")[0].strip() for part in inside.split(", ") if "=" in part]


def _without_preset_values(method: str, settings: dict[str, str | None]) -> dict[str, str | None]:
    """``settings`` with its training values only where they differ from those of its preset (no
    preset: the paper's), and no empty preset: a label names ``preset=official`` rather than the
    values it stands for, and ``train.local_epochs=1`` where a flag changed one (docs/protocol.md)."""
    preset = settings.get("preset") or "paper"
    try:
        implied = preset_layer(preset, method)["train"]
    except (FedbenchError, KeyError):  # a plugin not installed here, an unknown preset: name every value
        return settings
    expected = {f"train.{k}": str(v) for k, v in implied.items()}
    return {k: v for k, v in settings.items()
            if not (k == "preset" and not v) and not (k in expected and v == expected[k])}


# Evaluation protocols other than the default are always named in a row label, so a table says
# which was used even when every run of the method used it (NeuLite's evaluate=stage scores the
# just-trained stage model every round, the released code's protocol; DepthFL's ensemble=all
# averages untrained exits too).
# The `official` preset (each baseline's own optimizer) is named too.
_PROTOCOL_SETTINGS = {"options.evaluate": "cycle", "options.ensemble": "trained", "preset": "paper"}


def _off_protocol(key: str, value: str | None) -> bool:
    return key in _PROTOCOL_SETTINGS and value not in (None, "") and str(value) != _PROTOCOL_SETTINGS[key]


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
        cut = len(runs) and runs["status"].isin(["KILLED", "FAILED", "RUNNING"]).any()
        hint = ("continue a stopped run with 'fedbench run --resume RUN_ID' ('fedbench checkpoints list' names "
                "them) or re-run its sweep" if cut else f"run 'fedbench run --experiment {experiment}' first")
        raise ConfigError(f"experiment '{experiment}' has no finished runs (runs: {statuses}); {hint}")
    skipped = len(runs) - len(done)
    warnings = [f"skipping {skipped} unfinished run(s) of experiment '{experiment}'"] if skipped else []
    keys = _column(done, "tags.fedbench.run_key").fillna(done["run_id"])
    latest = done.assign(_key=keys).sort_values("start_time").groupby("_key", sort=False).tail(1)
    if len(latest) < len(done):
        warnings.append(f"{len(done) - len(latest)} finished run(s) of experiment '{experiment}' repeat the "
                        "configuration (run key) of a later run, which replaces them")
    return latest.drop(columns="_key").sort_values("start_time").reset_index(drop=True), warnings


def cycle_end_evaluations(history: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``history`` without the ``eval/accuracy`` values of rounds that end none of their method's
    cycles (``eval/cycle_end`` = 0; only the last round of a run can be one), and a warning per
    run that had one. A NeuLite run whose rounds are not a multiple of S ends with a stage-k < S
    round; its final value is the one after the last stage-S round (spec neulite §2.9). Runs
    logged without ``eval/cycle_end`` keep every evaluation."""
    ends = history[history["key"] == CYCLE_END]
    off_cycle = ends[ends["value"] == 0][["run_id", "round"]]
    rest = history[history["key"] != CYCLE_END]
    if off_cycle.empty:
        return rest, []
    marked = rest.merge(off_cycle.assign(off_cycle=True), on=["run_id", "round"], how="left")
    dropped = marked["off_cycle"].eq(True) & marked["key"].eq(ACCURACY)
    warnings = [
        f"run {run_id[:8]}: the evaluation after round {int(round_idx) + 1} ends no cycle of its method "
        "(NeuLite: --rounds not a multiple of its stages) and is left out of final and best accuracy"
        for run_id, round_idx in marked.loc[dropped, ["run_id", "round"]].itertuples(index=False)
    ]
    return rest[~dropped.to_numpy()], warnings


def final_accuracy(evaluations: Sequence[tuple[int, float]], last_evals: int, rounds: float,
                   eval_every: float) -> float:
    """Mean accuracy of the evaluations in the run's last ``last_evals × eval_every`` rounds, or
    its last evaluation when none falls there.

    The window is counted in rounds, not evaluations, so every method's final value covers the
    same rounds: NeuLite, scored only after stage-S rounds, has fewer evaluations in the window
    than a method scored every ``eval_every`` rounds, not older ones. ``evaluations`` are
    (0-based round, accuracy) in round order; a run that logged no round count falls back to its
    last ``last_evals`` evaluations."""
    if not evaluations:
        return math.nan
    eval_every = 1.0 if math.isnan(eval_every) else eval_every  # not logged: the default
    if math.isnan(rounds):
        window = [value for _, value in evaluations[-last_evals:]]
    else:
        first = rounds - last_evals * eval_every
        window = [value for round_idx, value in evaluations if round_idx >= first] or [evaluations[-1][1]]
    return sum(window) / len(window)


def summarize(
    runs: pd.DataFrame, history: pd.DataFrame, last_evals: int = DEFAULT_LAST_EVALS
) -> tuple[pd.DataFrame, list[str]]:
    """One row per run (:data:`SUMMARY_COLUMNS` + ``options.*``) and a list of warnings
    naming each run whose metrics are missing (its cells are left out, the rest renders).

    ``history`` is the long frame of ``eval/accuracy`` values (``run_id, key, round, value``).
    Final accuracy is the mean over the last ``last_evals`` evaluation intervals
    (:func:`final_accuracy`), best the maximum.
    """
    if last_evals < 1:
        raise ConfigError(f"--last ({last_evals}) must be >= 1 (the evaluation intervals averaged into final accuracy)")
    accuracy = history[history["key"] == ACCURACY].sort_values("round")
    by_run = {run_id: list(zip(group["round"].tolist(), group["value"].tolist(), strict=True))
              for run_id, group in accuracy.groupby("run_id")}
    rows, warnings, settings = [], [], []
    defaults = _defaults()
    for _, run in runs.iterrows():
        settings.append(run_settings(run, defaults))
        evaluations = by_run.get(run["run_id"], [])
        values = [value for _, value in evaluations]
        row = {
            "run_id": run["run_id"],
            "method": run.get("tags.fedbench.method") or run.get("params.method"),
            "dataset": run.get("tags.fedbench.dataset") or run.get("params.data.dataset"),
            "model": run.get("tags.fedbench.model") or run.get("params.model.name"),
            "partition": run.get("params.data.partition"),
            "alpha": run.get("params.data.alpha"),
            "seed": run.get("params.seed"),
            "final_accuracy": final_accuracy(evaluations, last_evals, _number(run.get("params.rounds")),
                                             _number(run.get("params.eval_every", 1))),
            "best_accuracy": max(values) if values else math.nan,
            "pr": _number(run.get(f"metrics.{PARTICIPATION}")),
            "rounds": _number(run.get("params.rounds")),
            "virtual_time_s": _number(run.get(f"metrics.{VIRTUAL_TIME}")),
            "ignores_memory": run.get("tags.fedbench.ignores_memory") == "true",  # vanilla FedAvg
            "code_version": provenance.recorded_version(
                {tag: value for tag in (provenance.TAG, provenance.COMMIT_TAG)
                 if isinstance(value := run.get(f"tags.{tag}"), str)}),
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
    frame["method_label"] = method_labels(frame, settings)
    # The method and the settings other than the ablation switches that differ between its runs.
    frame["ablation_label"] = method_labels(
        frame, [{k: v for k, v in s.items() if k not in ABLATION_SWITCHES} for s in settings])
    warnings += mixed_protocol_warnings(frame, settings)
    frame, repeats = _one_run_per_seed(frame)
    return frame.reindex(columns=[*SUMMARY_COLUMNS, *options]), warnings + repeats + _untrainable_seeds(frame)


def _untrainable_seeds(frame: pd.DataFrame) -> list[str]:
    """A line per configuration where some seeds had PR 0 (no device could train: the fleet is
    drawn per seed) and others trained: its accuracy averages only the seeds that trained, and its
    n says how many."""
    lines = []
    for group, runs in frame.groupby(list(GROUP_KEYS), sort=True, dropna=False):
        untrained = runs[runs["pr"] == 0]
        if 0 < len(untrained) < len(runs):
            seeds = ", ".join(str(s) for s in untrained["seed"])
            lines.append(f"{' · '.join(map(str, group))}: seed(s) {seeds} had PR 0 (no device could train); "
                         f"its accuracy averages the {len(runs) - len(untrained)} seed(s) that trained")
    return lines


def ignores_memory_by_label(summary: pd.DataFrame) -> dict[str, bool]:
    """Per row label, whether its runs ignore memory budgets (vanilla FedAvg): a reference, never
    the bold best of a table nor called inclusive."""
    if "ignores_memory" not in summary.columns:
        return {}
    return {label: bool(v) for label, v in summary.groupby("method_label")["ignores_memory"].all().items()}


def _one_run_per_seed(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Runs that differ only in :data:`IGNORED_SETTINGS` besides the seed (threads, device, the
    executor) have different run keys but measure the same thing: of a seed run twice, the later
    run (``frame`` is in start order) is kept, so a cell's n counts seeds, not runs."""
    repeated = frame.duplicated([*GROUP_KEYS, "seed"], keep="last")
    warnings = [
        f"run {row['run_id'][:8]} ({row['method_label']}, {row['dataset']}, {row['model']}, seed {row['seed']}) "
        "repeats a later run's configuration and seed in all but where it ran; the later run is used"
        for _, row in frame[repeated].iterrows()
    ]
    return frame[~repeated].reset_index(drop=True), warnings


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
