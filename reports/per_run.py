"""One row per run, as numbers: the table behind every report, for a researcher's own analysis.

The paper's tables show display strings ("65.0 ± 7.1 (n=2)"); this export keeps what they are
computed from — each run's final and best accuracy (fractions), PR, rounds, simulated time,
seed, options and the code version that made it — so pandas, R or a spreadsheet can regroup
them without parsing text.
"""

from __future__ import annotations

import pandas as pd

# The exported columns, in order; the runs' ``options.*`` follow. ``method_label`` is the row a
# run belongs to in the tables (its method and the settings that set it apart).
RUN_COLUMNS = (
    "run_id", "method", "method_label", "dataset", "model", "partition", "alpha", "seed",
    "final_accuracy", "best_accuracy", "pr", "rounds", "virtual_time_s", "ignores_memory", "code_version",
)


def runs_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs of a summary (:func:`fedbench.reports.summary.summarize`) in the tables' order:
    by method label, data set, model, partition and seed."""
    options = sorted(c for c in summary.columns if str(c).startswith("options."))
    table = summary.reindex(columns=[*RUN_COLUMNS, *options])
    table["rounds"] = table["rounds"].astype("Int64")  # a count, not 2.0 (empty where not logged)
    order = ["method_label", "dataset", "model", "partition", "alpha", "seed"]
    return table.sort_values(order, key=lambda column: column.astype(str), kind="stable").reset_index(drop=True)


def to_csv(table: pd.DataFrame) -> str:
    """CSV with full-precision numbers; a missing value (no accuracy where PR is 0) is empty."""
    return table.to_csv(index=False, lineterminator="\n")
