"""Tidy frames behind the figures: convergence curves, ablation bars, the nHSIC plane.

Pure functions of the frames :mod:`fedbench.reports.runs` reads. A metric that no
run logged is a one-line :class:`ConfigError` naming it; a metric some runs lack
becomes a warning naming those runs, and the rest is drawn.
"""

from __future__ import annotations

import re

import pandas as pd

from fedbench.errors import ConfigError
from fedbench.reports.summary import ACCURACY, VIRTUAL_TIME, Stat

X_AXES = {"round": "round", "virtual_time": "virtual time (s)"}
NHSIC_KEY = re.compile(r"^nhsic/(xz|yz)/block(\d+)$")

# NeuLite ablation variants (Fig. 8). Spec §2.11 Decision: the paper's "w/o parameter
# co-adaptation" is sequential progressive training, i.e. both harmonizer switches off
# (co_adaptation=False *and* round_robin=False); one switch alone is a variant of its own.
ABLATION_ORDER = ("FedAvg", "w/o curriculum loss", "w/o co-adaptation", "w/o co-adapted layers",
                  "w/o round-robin", "w/o both", "NeuLite")


def ablation_variant(curriculum_loss: bool, co_adaptation: bool, round_robin: bool) -> str:
    """The Fig. 8 name of a NeuLite run from its three ablation switches."""
    if co_adaptation != round_robin:  # only one harmonizer switch off: not one of the paper's bars
        missing = "co-adapted layers" if not co_adaptation else "round-robin"
        return f"w/o {missing}" if curriculum_loss else f"w/o curriculum loss, {missing}"
    harmonizer = co_adaptation
    return {(True, True): "NeuLite", (False, True): "w/o curriculum loss",
            (True, False): "w/o co-adaptation", (False, False): "w/o both"}[(curriculum_loss, harmonizer)]


def panel_name(row: pd.Series) -> str:
    return f"{row['dataset']} · {row['model']} · {row['partition_label']}"


def check_x_axis(x: str) -> None:
    if x not in X_AXES:
        raise ConfigError(f"--x ({x!r}) must be one of {', '.join(X_AXES)}")


def curves(summary: pd.DataFrame, history: pd.DataFrame, x: str = "round") -> tuple[pd.DataFrame, list[str]]:
    """Mean ``eval/accuracy`` over seeds per (panel, method, round) against round (1-based)
    or ``clock/total_s`` (mean over seeds at that round). Returns the frame
    (``panel, method, x, accuracy, std``) and warnings."""
    check_x_axis(x)
    acc = history[history["key"] == ACCURACY][["run_id", "round", "value"]].rename(columns={"value": "accuracy"})
    warnings = []
    if x == "virtual_time":
        clock = history[history["key"] == VIRTUAL_TIME][["run_id", "round", "value"]]
        if clock.empty:
            raise ConfigError(
                f"no run logged {VIRTUAL_TIME} (the virtual clock); plot against rounds with --x round"
            )
        lacking = sorted(set(acc["run_id"]) - set(clock["run_id"]))
        if lacking:
            warnings.append(f"{len(lacking)} run(s) have no {VIRTUAL_TIME} and are left out: "
                            + ", ".join(r[:8] for r in lacking))
        acc = acc.merge(clock.rename(columns={"value": "x"}), on=["run_id", "round"])
    else:
        acc = acc.assign(x=acc["round"] + 1.0)
    if acc.empty:
        raise ConfigError(f"no run logged {ACCURACY}; nothing to plot")
    info = summary.set_index("run_id")
    acc = acc[acc["run_id"].isin(info.index)]
    acc = acc.assign(
        panel=[panel_name(info.loc[r]) for r in acc["run_id"]],
        method=[info.loc[r, "method_label"] for r in acc["run_id"]],
    )
    rows = []
    for (panel, method, _round), group in acc.groupby(["panel", "method", "round"], sort=True):
        stat = Stat.of(group["accuracy"].tolist())
        rows.append({"panel": panel, "method": method, "x": group["x"].mean(), "accuracy": stat.mean,
                     "std": stat.std})
    return pd.DataFrame(rows, columns=["panel", "method", "x", "accuracy", "std"]), warnings


def _flag(value: object, default: bool = True) -> bool:
    """An option as MLflow logged it ("True"/"False"); not logged means the default."""
    if value is None or (isinstance(value, float) and value != value):
        return default
    return str(value).strip().lower() not in ("false", "0", "no", "off")


def ablation(summary: pd.DataFrame, baseline: str = "fedavg", method: str = "neulite") -> pd.DataFrame:
    """Fig. 8 bars: per setting (data set, model, partition) the final accuracy of the reference
    (``baseline``, in the paper's "FedAvg" slot, labelled ``FedAvg (exclusivefl)`` when another
    method fills it) and of
    each NeuLite variant, keyed by ``options.curriculum_loss`` / ``options.co_adaptation`` /
    ``options.round_robin`` (absent = the default, ``True``; see :func:`ablation_variant`) and by
    any other setting in which a method's runs differ (named after the variant, e.g.
    ``NeuLite (rounds=40)``): only seeds of one configuration are averaged. Columns ``group,
    bar`` (the Fig. 8 bar: FedAvg or a :func:`ablation_variant` name), ``variant`` (the bar and
    the settings that set its runs apart), ``accuracy, std, runs``; bars in the paper's order."""
    chosen = summary[summary["method"].isin([baseline, method])]
    if not (chosen["method"] == method).any():
        found = ", ".join(sorted(set(summary["method"]))) or "none"
        raise ConfigError(f"no {method} runs for the ablation (methods in this experiment: {found})")
    bars, labels = [], []
    for _, row in chosen.iterrows():
        if row["method"] == baseline:
            # The reference slot of Fig. 8 ("FedAvg"), whichever method fills it (the paper's own
            # numbers make it ExclusiveFL, configs/paper/ablation.yaml): the variant names it.
            bar = "FedAvg"
        else:
            bar = ablation_variant(*(_flag(row.get(f"options.{name}"))
                                     for name in ("curriculum_loss", "co_adaptation", "round_robin")))
        # Runs that differ in anything but the switches (rounds, λ, ...) are other bars, never seeds.
        other = str(row.get("ablation_label") or row["method"]).removeprefix(str(row["method"]))
        if row["method"] == baseline and baseline != "fedavg":
            other = f" ({baseline}){other}"
        bars.append(bar)
        labels.append(bar + other)
    chosen = chosen.assign(bar=bars, variant=labels, group=[panel_name(r) for _, r in chosen.iterrows()])
    order = {v: i for i, v in enumerate(ABLATION_ORDER)}  # other combinations sort last
    rows = []
    for (group, bar, variant), runs in chosen.groupby(["group", "bar", "variant"], sort=True):
        stat = Stat.of(runs["final_accuracy"].tolist())
        if not stat.missing:
            rows.append({"group": group, "bar": bar, "variant": variant, "accuracy": stat.mean, "std": stat.std,
                         "runs": stat.n})
    rows.sort(key=lambda r: (r["group"], order.get(r["bar"], len(order)), r["variant"]))
    return pd.DataFrame(rows, columns=["group", "bar", "variant", "accuracy", "std", "runs"])


def missing_bars(bars: pd.DataFrame) -> list[str]:
    """A line per setting of :func:`ablation`'s frame naming the paper's Fig. 8 bars it has no
    runs for ("w/o both" is no bar of the paper)."""
    lines = []
    for group, variants in bars.groupby("group", sort=False):
        present = set(variants["bar"])
        missing = [v for v in ABLATION_ORDER if v not in present and v != "w/o both"
                   and v not in ("w/o co-adapted layers", "w/o round-robin")]
        if missing:
            lines.append(f"{group}: no runs for {', '.join(missing)}")
    return lines


def nhsic_keys(metric_keys: list[str]) -> list[str]:
    """The ``nhsic/xz/block<b>`` / ``nhsic/yz/block<b>`` keys among a run's metric keys."""
    return sorted(k for k in metric_keys if NHSIC_KEY.match(k))


def info_plane(history: pd.DataFrame, run_label: str) -> pd.DataFrame:
    """Points (``run, block, round, xz, yz``) of one run: per block and round, nHSIC(X;Z) and
    nHSIC(Y;Z). A block needs both metrics; neither at all is a :class:`ConfigError`."""
    parsed = history.assign(
        which=[NHSIC_KEY.match(k).group(1) if NHSIC_KEY.match(k) else None for k in history["key"]],
        block=[int(NHSIC_KEY.match(k).group(2)) if NHSIC_KEY.match(k) else None for k in history["key"]],
    ).dropna(subset=["which"])
    if parsed.empty:
        raise ConfigError(
            f"run {run_label} logged no nhsic/xz/block<b> or nhsic/yz/block<b> metrics "
            "(a run logs them on evaluation rounds with --info-plane N, any method); pick such a run"
        )
    wide = parsed.pivot_table(index=["block", "round"], columns="which", values="value").reset_index()
    for side in ("xz", "yz"):
        if side not in wide.columns:
            raise ConfigError(f"run {run_label} logged no nhsic/{side}/block<b> metrics; both axes are needed")
    wide = wide.dropna(subset=["xz", "yz"])
    wide.insert(0, "run", run_label)
    return wide[["run", "block", "round", "xz", "yz"]].astype({"block": int, "round": int})
