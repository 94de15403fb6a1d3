"""Table 1 and Table 2 of the paper from run summaries: methods × column groups of accuracy, plus PR.

A table is data (:class:`Table` of :class:`Cell`); :mod:`fedbench.reports.render`
writes it as Markdown, LaTeX or CSV. Whatever methods, data sets, models and
partitions the runs hold become rows and columns; a combination nobody ran is a
missing cell ("–"), and a method whose participation rate on a model is 0 gets
"NA" there, as in the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from fedbench.errors import ConfigError
from fedbench.reports.summary import DEFAULT_LAST_EVALS, Stat, aggregate, ignores_memory_by_label, is_iid

MISSING = "–"
NOT_APPLICABLE = "NA"
IGNORES_MEMORY = "n/a"  # the Incl. cell of a method that trains devices whatever their budget
# A method is inclusive when every device may take part: PR of 100 % (to rounding).
INCLUSIVE_PR = 0.995
# Row order of the paper's tables; methods it does not name follow alphabetically.
PAPER_METHOD_ORDER = (
    "allsmall", "exclusivefl", "depthfl", "heterofl", "fedrolex", "tifl", "oort", "fedavg", "progfed", "neulite",
)
METRICS = ("final", "best")
# Column order of the paper's tables (data sets, then models); others follow alphabetically.
PAPER_DATASET_ORDER = ("cifar10", "cinic10", "cinic10-trainval", "cifar100")
PAPER_MODEL_ORDER = ("resnet18", "vgg11_bn", "squeezenet", "squeezenet_nopool", "resnet34")
PAPER_COLUMN_ORDER = PAPER_DATASET_ORDER + PAPER_MODEL_ORDER


@dataclass(frozen=True)
class Cell:
    """One rendered cell: ``text`` as shown, ``bold`` for the best inclusive value,
    ``value`` the number behind it (a fraction for accuracies and PRs; NaN if none)."""

    text: str
    bold: bool = False
    value: float = math.nan


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""
    # What each column holds, for views that add to a table (fedbench.reports.paper): None for a
    # label column, else {"metric": "accuracy" | "pr", and the column's keys, e.g. "dataset", "model"}.
    keys: tuple[dict[str, str] | None, ...] = ()


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"--metric ({metric!r}) must be one of {', '.join(METRICS)}")


def method_order(labels: Sequence[str]) -> list[str]:
    """Rows in the paper's order of methods (a label's first word), others alphabetically after them."""
    def key(label: str) -> tuple:
        base = label.split(" ")[0]
        rank = PAPER_METHOD_ORDER.index(base) if base in PAPER_METHOD_ORDER else len(PAPER_METHOD_ORDER)
        return (rank, label)

    return sorted(set(labels), key=key)


def percent(stat: Stat, decimals: int = 1, spread: bool = True, count: bool = False) -> str:
    """``80.4`` for one seed, ``80.4 ± 0.3`` for several (sample std; ``spread=False``: the mean
    only), ``–`` for none; ``count`` appends the number of seeds, ``80.4 ± 0.3 (n=3)``, so a
    reader sees what each mean rests on."""
    if stat.missing:
        return MISSING
    text = f"{100 * stat.mean:.{decimals}f}"
    if spread and stat.n > 1:
        text += f" ± {100 * stat.std:.{decimals}f}"
    return f"{text} (n={stat.n})" if count else text


def accuracy_table(
    summary: pd.DataFrame,
    column_keys: Sequence[str],
    title: str,
    metric: str = "final",
    last_evals: int | None = None,
) -> Table:
    """Methods × groups of ``column_keys`` (e.g. dataset, model) of accuracy, then PR per model.

    ``summary`` is :func:`fedbench.reports.summary.summarize`'s frame, already filtered to
    the runs the table covers. ``metric`` picks final or best accuracy.
    """
    check_metric(metric)
    cells = aggregate(summary, ("method_label", *column_keys)).rename(columns={"method_label": "method"})
    by_model = aggregate(summary, ("method_label", "model")).set_index(["method_label", "model"])
    columns = sorted({tuple(row[k] for k in column_keys) for _, row in cells.iterrows()}, key=column_order)
    models = sorted({row["model"] for _, row in cells.iterrows()}, key=lambda m: _paper_rank(m, PAPER_MODEL_ORDER))
    methods = method_order(sorted(set(cells["method"])))
    lookup = {(row["method"], *(row[k] for k in column_keys)): row for _, row in cells.iterrows()}

    def model_pr(method: str, model: str) -> Stat:
        return by_model.loc[(method, model), "pr"] if (method, model) in by_model.index else Stat.of([])

    # A method that ignores memory budgets (vanilla FedAvg) is no candidate: "n/a", never bold.
    ignores_memory = ignores_memory_by_label(summary)
    inclusive: dict[str, bool | None] = {}
    for method in methods:
        prs = [model_pr(method, m) for m in models]
        known = [s.mean for s in prs if not s.missing]
        inclusive[method] = None if not known or ignores_memory.get(method) else all(v >= INCLUSIVE_PR for v in known)

    def accuracy_cell(method: str, column: tuple) -> Cell:
        row = lookup.get((method, *column))
        if row is not None and row["pr"].mean == 0:  # every run of this cell: no device could train
            return Cell(NOT_APPLICABLE)
        stat = row[metric] if row is not None else Stat.of([])
        return Cell(percent(stat, count=True), value=stat.mean)

    grid = {method: [accuracy_cell(method, column) for column in columns] for method in methods}
    for j in range(len(columns)):  # bold: the best inclusive value of each accuracy column
        values = [grid[m][j].value for m in methods if inclusive[m] and not math.isnan(grid[m][j].value)]
        for m in methods:
            cell = grid[m][j]
            if values and inclusive[m] and cell.value == max(values):
                grid[m][j] = Cell(cell.text, bold=True, value=cell.value)
    rows = []
    for method in methods:
        incl = IGNORES_MEMORY if ignores_memory.get(method) else {None: MISSING, True: "yes", False: "no"}[inclusive[method]]
        prs = [model_pr(method, m) for m in models]
        pr_cells = [Cell(percent(s, 0, spread=False), value=s.mean) for s in prs]
        rows.append((Cell(method), Cell(incl), *grid[method], *pr_cells))
    header = ("Method", "Incl.", *(" ".join(map(str, c)) for c in columns), *(f"PR {m}" for m in models))
    which = "final" if metric == "final" else "best"
    how = f"mean over the last {last_evals or DEFAULT_LAST_EVALS} evaluation intervals" if metric == "final" else "maximum over rounds"
    note = (
        f"Accuracy (%): {which} `eval/accuracy` ({how}), mean ± sample std over the n seeds of one "
        "configuration (runs that differ in anything else are separate rows, labelled by those settings); "
        f"PR (%): `participation/rate`; bold: best inclusive method (PR 100 %); "
        + (f"Incl. {IGNORES_MEMORY}: the method ignores memory budgets (vanilla FedAvg); "
           if any(ignores_memory.get(m) for m in methods) else "")
        + f"{MISSING}: not run; {NOT_APPLICABLE}: PR 0, the method cannot run."
    )
    keys = (None, None, *({"metric": "accuracy", **dict(zip(column_keys, map(str, c), strict=True))} for c in columns),
            *({"metric": "pr", "model": m} for m in models))
    return Table(title, header, tuple(rows), note, keys)


def _paper_rank(value: object, order: Sequence[str]) -> tuple:
    text = str(value)
    return (order.index(text) if text in order else len(order), text)


def column_order(column: tuple) -> tuple:
    """Data sets and models in the paper's order, IID before non-IID within a data set; values
    the paper does not use follow alphabetically."""
    return tuple((0 if is_iid(str(v)) else 1, *_paper_rank(v, PAPER_COLUMN_ORDER)) for v in column)


def table1(summary: pd.DataFrame, metric: str = "final", iid: bool = False, last_evals: int | None = None) -> Table:
    """Table 1: methods × (data set, model) on the non-IID runs (``iid=True``: the IID runs)."""
    chosen = summary[summary["partition_label"].map(is_iid) == iid]
    if chosen.empty:
        wanted, other = ("IID", "non-IID") if iid else ("non-IID", "IID")
        flag = "drop --iid" if iid else "add --iid"
        raise ConfigError(f"no {wanted} runs for Table 1 (data.partition); {flag} to tabulate the {other} runs")
    title = f"Table 1 — {'IID' if iid else 'non-IID'}: accuracy (%) and participation rate PR (%)"
    # Runs of several partitions (α = 0.1 and 0.5, say) are separate columns, never seeds of one.
    several = chosen["partition_label"].nunique(dropna=False) > 1
    columns = ("dataset", "partition_label", "model") if several else ("dataset", "model")
    return accuracy_table(chosen, columns, title, metric, last_evals)


def table2(summary: pd.DataFrame, metric: str = "final", last_evals: int | None = None) -> Table:
    """Table 2: methods × (data set, partition, model), IID next to non-IID."""
    title = "Table 2 — IID and non-IID: accuracy (%) and participation rate PR (%)"
    return accuracy_table(summary, ("dataset", "partition_label", "model"), title, metric, last_evals)
