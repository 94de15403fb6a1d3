"""The NeuLite paper's published numbers beside fedbench's: ``fedbench report table1|table2 --compare paper``.

A reproduction is judged against the paper's tables, so the published values of Table 1 and
Table 2 (accuracy and PR, in %) ship with fedbench as ``paper_values.csv``, transcribed from the
paper (``table, method, dataset, partition, model, metric, value``; ``value`` as printed, a
number or ``NA`` where no device could train the model). :func:`compare` turns a table of
:mod:`fedbench.reports.tables` into one where each accuracy and PR column becomes three:
fedbench's cell, the paper's value and the difference in points.

Matching is by the method (a row's first word: a labelled configuration of a method is still
compared with that method's published value), the data set, the partition (IID or non-IID: the
paper's α is not known, any Dirichlet α counts as non-IID) and the model. The paper's SqueezeNet
is unpublished and either zoo variant may stand for it, so ``squeezenet_nopool`` is compared with
it too; ``cinic10-trainval`` is compared with CINIC-10.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import replace
from importlib import resources

from fedbench.errors import ConfigError
from fedbench.reports.summary import is_iid
from fedbench.reports.tables import Cell, Table

SOURCES = ("paper",)
PAPER_FILE = "paper_values.csv"
NO_VALUE = "—"  # nothing published (or nothing to subtract)
PUBLISHED_NA = "NA"
MODEL_ALIASES = {"squeezenet_nopool": "squeezenet"}
DATASET_ALIASES = {"cinic10-trainval": "cinic10"}
IID, NON_IID = "iid", "non-iid"

# (metric, method, dataset, partition, model) -> the value as printed; PR keys have no data set
# or partition (the paper gives one PR per method and model).
PaperKey = tuple[str, str, str, str, str]


def check_source(source: str) -> None:
    """``--compare`` takes a known source of published values."""
    if source not in SOURCES:
        raise ConfigError(f"--compare ({source!r}) must be one of {', '.join(SOURCES)}")


@functools.cache
def paper_values() -> dict[PaperKey, str]:
    """Every published value of the paper's Tables 1 and 2, read once from the packaged CSV. A
    cell printed in both tables (ResNet18, non-IID CIFAR-10 and CIFAR-100) has the same value."""
    text = resources.files("fedbench.reports").joinpath(PAPER_FILE).read_text(encoding="utf-8")
    values: dict[PaperKey, str] = {}
    for row in csv.DictReader(io.StringIO(text)):
        key = (row["metric"], row["method"], row["dataset"], row["partition"], row["model"])
        values[key] = row["value"]
    return values


def published(metric: str, method: str, model: str, dataset: str = "", partition: str = "") -> str | None:
    """The paper's value as printed (``"80.4"``, ``"NA"``), or None where it published none.
    ``partition`` is ``iid`` or ``non-iid``; PRs take no data set or partition."""
    key = (metric, method, DATASET_ALIASES.get(dataset, dataset), partition, MODEL_ALIASES.get(model, model))
    return paper_values().get(key)


def _published_for(method: str, column: dict[str, str], partition: str) -> str | None:
    if column["metric"] == "pr":
        return published("pr", method, column["model"])
    label = column.get("partition_label")
    part = partition if label is None else (IID if is_iid(label) else NON_IID)
    return published("accuracy", method, column["model"], column["dataset"], part)


def _paper_cell(text: str | None) -> Cell:
    if text is None:
        return Cell(NO_VALUE)
    if text == PUBLISHED_NA:
        return Cell(PUBLISHED_NA)
    return Cell(text, value=float(text) / 100)


def _delta_cell(ours: Cell, theirs: Cell, decimals: int) -> Cell:
    if math.isnan(ours.value) or math.isnan(theirs.value):
        return Cell(NO_VALUE)
    return Cell(f"{100 * (ours.value - theirs.value):+.{decimals}f}", value=ours.value - theirs.value)


def compare(table: Table, source: str = "paper", iid: bool = False) -> Table:
    """``table`` with each accuracy and PR column split into ``<column> fedbench``, ``<column>
    paper`` and ``<column> Δ`` (fedbench − paper, points). ``iid``: the partition of columns that do
    not name one (Table 1 tabulates either the non-IID or, with ``--iid``, the IID runs)."""
    check_source(source)
    if not table.keys:
        raise ConfigError(f"{table.title} has no accuracy or PR columns to compare with the paper")
    partition = IID if iid else NON_IID
    columns: list[str] = []
    keys: list[dict[str, str] | None] = []
    for name, key in zip(table.columns, table.keys, strict=True):
        if key is None:
            columns.append(name)
            keys.append(None)
        else:
            columns += [f"{name} fedbench", f"{name} paper", f"{name} Δ"]
            keys += [key, {**key, "source": "paper"}, {**key, "source": "delta"}]
    rows = []
    for row in table.rows:
        method = row[0].text.split(" ")[0]
        cells: list[Cell] = []
        for cell, key in zip(row, table.keys, strict=True):
            if key is None:
                cells.append(cell)
                continue
            theirs = _paper_cell(_published_for(method, key, partition))
            cells += [cell, theirs, _delta_cell(cell, theirs, 0 if key["metric"] == "pr" else 1)]
        rows.append(tuple(cells))
    note = (
        f"{table.note} paper: the value published in the NeuLite paper (Tables 1 and 2) for the same "
        f"method, data set, partition (IID or non-IID, any α) and model; {NO_VALUE}: none published; "
        "Δ: fedbench − paper, in points."
    ).strip()
    return replace(table, columns=tuple(columns), rows=tuple(rows), note=note, keys=tuple(keys))
