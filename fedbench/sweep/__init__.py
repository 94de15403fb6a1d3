"""Sweeps: a grid of runs (method × dataset × model × seed …) from one YAML file.

A grid file holds a ``base`` run config, the ``axes`` to vary (dotted config
keys → lists of values), optional ``cases`` (settings that go together, such as a
number of devices and the clients drawn from them: each case is a mapping of dotted keys, and
the grid is every case × every combination of the axes) and an ``experiment``. Each cell is
one run with a stable key (:attr:`RunConfig.run_key`). Cells already
FINISHED in the tracking store are skipped, a cell whose last run was cut short
(RUNNING after a SIGKILL, KILLED, FAILED) and left a checkpoint is resumed from
it, and a failing cell is recorded as FAILED with its one-line reason and never
stops the others. A cell whose method no device of the fleet can train is not a failure but
the paper's "NA": it is recorded as a FINISHED run with ``participation/rate`` 0, which the
report tables show as NA. Cells run here one after the other, in a pool of processes
(``max_parallel``) or as Ray tasks (``executor="ray"``: a local Ray, or the
cluster at ``$RAY_ADDRESS``; log to a shared MLflow server then). On Ray a cell whose
``device`` is ``cuda``/``cuda:N`` also asks for ``gpus_per_cell`` GPUs (default 1; 0.25 packs
four cells on one GPU) and computes on the GPU Ray assigned it, under the cell's own run key.

    experiment: mini-table1
    base: {rounds: 20, data: {dataset: fashion-mnist}}
    axes:
      method: [fedavg, exclusivefl]
      seed: [1, 2, 3]
    cases:                         # optional: each case x every combination of the axes
      - {data.num_clients: 100, clients_per_round: 10}
      - {data.num_clients: 500, clients_per_round: 50}
    gpus_per_cell: 0.5             # optional: GPUs each cuda cell asks Ray for
"""

from __future__ import annotations

from fedbench.sweep.grid import (
    GRID_KEYS,
    MAX_GRID_CELLS,
    Cell,
    Grid,
    GridFile,
    cell_overrides,
    check_gpus_per_cell,
    check_registered_names,
    iter_cells,
    leaf_settings,
    load_grid,
    read_grid,
)
from fedbench.sweep.runner import (
    FORWARDED_ENV,
    SWEEP_EXECUTORS,
    CellOutcome,
    cell_resources,
    check_gpu_option,
    check_ray_devices,
    resolve_executor,
    run_cell,
    run_grid,
    summarize,
)
from fedbench.sweep.store import finished_keys, resumable_runs, skip_reason

__all__ = [
    "FORWARDED_ENV", "GRID_KEYS", "MAX_GRID_CELLS", "SWEEP_EXECUTORS", "Cell", "CellOutcome", "Grid", "GridFile",
    "cell_overrides", "cell_resources", "check_gpu_option", "check_gpus_per_cell", "check_ray_devices",
    "check_registered_names",
    "finished_keys", "iter_cells", "leaf_settings", "load_grid", "read_grid", "resolve_executor",
    "resumable_runs", "run_cell", "run_grid", "skip_reason", "summarize",
]
