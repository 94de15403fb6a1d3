"""Grid files: read, checked and expanded into cells, each a validated run config with its run key.

A cell's settings come from the grid's ``base``, then its case, then its value on each axis; a
setting given twice, an unknown key, a bad value or a name no plugin registers (a misspelt method,
data set, model, partitioner or fleet profile) is one line naming the cell, before anything runs.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

from fedbench import registry
from fedbench.config import RunConfig, build_dataclass, deep_merge, dotted_to_nested, load_yaml, with_preset
from fedbench.errors import ConfigError, FedbenchError, UnknownNameError

GRID_KEYS = ("experiment", "base", "axes", "cases", "gpus_per_cell")
# The most cells one grid may hold. Every cell is validated and kept in memory before the first one
# runs, and each is a whole training run: a grid past this is almost always a mistyped axis, and
# a real one this large is better split into several grids (and experiments).
MAX_GRID_CELLS = 10_000
# The registry kind of each name a cell's config holds (fedbench/registry.py), checked before any cell runs.
NAMED_SETTINGS = (
    ("methods", "method"),
    ("datasets", "data.dataset"),
    ("models", "model.name"),
    ("partitioners", "data.partition"),
    ("fleets", "fleet.profile"),
)


@dataclass(frozen=True)
class Cell:
    """One run of a grid: the values it takes on each axis and its resolved config."""

    index: int
    values: Mapping[str, Any]
    config: RunConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items())


@dataclass(frozen=True)
class Grid:
    experiment: str
    cells: list[Cell]
    gpus_per_cell: float | None = None  # GPUs a cuda cell asks Ray for (None: 1)


@dataclass(frozen=True)
class GridFile:
    """A grid file read and checked, its cells not yet built (``--dry-run`` lists them as they are)."""

    experiment: str
    base: dict[str, Any]
    axes: Mapping[str, list[Any]]
    cases: Sequence[Mapping[str, Any]] = ()
    gpus_per_cell: float | None = None

    @property
    def size(self) -> int:
        return max(len(self.cases), 1) * math.prod(len(v) for v in self.axes.values())

    def cells(self) -> Iterator[Cell]:
        return iter_cells(self.base, self.axes, self.cases)


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Grid:
    """Read and expand a grid file; every cell is validated before anything runs."""
    grid = read_grid(path, overrides)
    return Grid(grid.experiment, list(grid.cells()), grid.gpus_per_cell)


def read_grid(path: str | Path, overrides: Mapping[str, Any] | None = None) -> GridFile:
    """A grid file's experiment, base config, axes, cases and ``gpus_per_cell``, checked but not
    expanded, so that ``--dry-run`` can list cells as they are built (:func:`iter_cells`)."""
    raw = load_yaml(path, "grid", "pass an existing grid YAML file (docs/sweeps.md)")
    unknown = sorted(set(raw) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"grid {path}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(GRID_KEYS)}")
    base = raw.get("base") or {}
    axes = raw.get("axes") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"grid {path}: 'base' must be a mapping of run-config keys")
    if not isinstance(axes, Mapping) or not all(isinstance(v, list) and v for v in axes.values()):
        raise ConfigError(f"grid {path}: 'axes' must map dotted config keys to non-empty lists, e.g. seed: [1, 2]")
    for name, values in axes.items():  # a repeated value would be the same run twice
        repeated = sorted(text for text, count in Counter(map(repr, values)).items() if count > 1)
        if repeated:
            raise ConfigError(f"grid {path}: axis '{name}' repeats {', '.join(repeated)}; list each value once")
    cases = read_cases(path, raw.get("cases"), axes)
    gpus_per_cell = raw.get("gpus_per_cell")
    if gpus_per_cell is not None:
        gpus_per_cell = check_gpus_per_cell(gpus_per_cell, f"grid {path}: gpus_per_cell")
    experiment = raw.get("experiment") or Path(path).stem
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError(f"grid {path}: 'experiment' ({experiment!r}) must be a name, e.g. experiment: mini-table1")
    base = deep_merge(base, dict(overrides or {}))
    base = deep_merge(base, {"tracking": {"experiment": experiment}})
    grid = GridFile(experiment, base, axes, cases, gpus_per_cell)
    if grid.size > MAX_GRID_CELLS:
        lengths = " x ".join(str(n) for n in ([len(cases)] if cases else []) + [len(v) for v in axes.values()])
        raise ConfigError(
            f"grid {path} has {grid.size:,} cells ({lengths}), above {MAX_GRID_CELLS:,}, the most one sweep "
            "validates and holds before running; split it into several grids"
        )
    return grid


def read_cases(path: str | Path, cases: Any, axes: Mapping[str, list[Any]]) -> tuple[dict[str, Any], ...]:
    """A grid's ``cases``: non-empty mappings of dotted keys, none repeated and none setting an axis
    (which would make the axis' value depend on the order of the two)."""
    if cases is None:
        return ()
    example = "e.g. cases: [{data.num_clients: 120, clients_per_round: 12}]"
    if not isinstance(cases, list) or not cases:
        raise ConfigError(f"grid {path}: 'cases' must be a non-empty list of mappings of dotted config keys, {example}")
    settings = []
    for number, case in enumerate(cases, start=1):
        if not isinstance(case, Mapping) or not case:
            raise ConfigError(f"grid {path}: case {number} ({case!r}) must be a non-empty mapping of dotted "
                              f"config keys, {example}")
        settings.append(leaf_settings(case, f"case {number}"))  # keys are names, no setting given twice
        shared = sorted(set(case) & set(axes))
        if shared:
            raise ConfigError(f"grid {path}: case {number} sets {', '.join(map(repr, shared))}, also an axis; "
                              "set each key in the axes or in the cases, not both")
    repeated = sorted(text for text, count in Counter(repr(sorted(c.items())) for c in settings).items() if count > 1)
    if repeated:
        raise ConfigError(f"grid {path}: 'cases' repeats {', '.join(repeated)}; list each case once")
    return tuple(dict(c) for c in cases)


def leaf_settings(values: Mapping[Any, Any], source: str = "", prefix: str = "") -> dict[str, Any]:
    """``values`` (dotted keys, nested mappings, or both) as one dotted key per setting:
    ``{data.alpha: 0.1, data: {num_clients: 12}}`` -> ``{data.alpha: 0.1, data.num_clients: 12}``.
    A setting given twice (``data.alpha`` and ``data: {alpha: ...}``) is a :class:`ConfigError`
    naming ``source``: which one wins would otherwise depend on the order of the keys. A grid's
    cells are all tracked as the grid says, so ``tracking`` is set in its base, never per cell."""
    settings: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source} has the key {key!r}, which is not a config key; keys are dotted names "
                              "such as data.alpha")
        dotted = f"{prefix}{key}"
        if dotted.split(".")[0] == "tracking":
            raise ConfigError(f"{source} sets {dotted!r}; every cell of a grid is tracked alike: set tracking in "
                              "'base' and the experiment with 'experiment:'")
        # A mapping holds settings (an empty one none: ``options: {}``, NeuLite as it is).
        inner = leaf_settings(value, source, f"{dotted}.") if isinstance(value, Mapping) else {dotted: value}
        for name, setting in inner.items():
            clash = _clash(settings, name)
            if clash is not None:
                raise ConfigError(f"{source} gives {clash!r} and {name!r}; give each setting once")
            settings[name] = setting
    return settings


def _clash(settings: Mapping[str, Any], name: str) -> str | None:
    """The setting among ``settings`` that ``name`` would overwrite or lie inside, if any."""
    return next((k for k in settings if k == name or name.startswith(f"{k}.") or k.startswith(f"{name}.")), None)


def cell_overrides(case: Mapping[str, Any], case_number: int | None, axis_values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested overrides of one cell: its case's settings and each axis' value, none of which may
    set what another sets (an axis ``data: [{alpha: 0.1}]`` next to a case's ``data.alpha``)."""
    settings: dict[str, Any] = {}
    owner: dict[str, str] = {}
    sources = ([(f"case {case_number}", case)] if case_number is not None else []) + [
        (f"axis {name!r}", {name: value}) for name, value in axis_values.items()]
    for source, values in sources:
        for name, value in leaf_settings(values, source).items():
            clash = _clash(settings, name)
            if clash is not None:
                raise ConfigError(f"{owner[clash]} sets {clash!r} and {source} sets {name!r}; give each setting once")
            settings[name] = value
            owner[name] = source
    return dotted_to_nested(settings)


def check_registered_names(config: RunConfig, known: dict[str, set[str]] | None = None) -> None:
    """A name no plugin registers (``method: neulit``, ``data.dataset: synthetc``) is the
    :class:`UnknownNameError` ``fedbench run`` would fail with, "did you mean" included, now, before
    any cell runs. Reads entry-point metadata only (no plugin is imported, no data loaded);
    ``known`` caches each kind's names across the cells of a grid. A registered name whose plugin
    cannot be loaded (a broken import, two distributions claiming it) still fails as its own cell."""
    known = {} if known is None else known
    for kind, setting in NAMED_SETTINGS:
        name = attrgetter(setting)(config)
        if kind not in known:
            known[kind] = {info.name for info in registry.available(kind)}
        if name not in known[kind]:
            raise UnknownNameError(registry.KINDS[kind], name, known[kind], registry.stray_registration(kind, name))


def check_method_options(config: RunConfig) -> None:
    """A method option of the wrong type or range is a :class:`ConfigError` now, before any cell
    runs, as ``fedbench run --opt`` says it. A registered method that cannot be loaded (its plugin
    fails to import) is left to fail as its own cell, with its own line; an unregistered one is
    :func:`check_registered_names`'s."""
    try:
        method = registry.load("methods", config.method)
    except FedbenchError:
        return
    parse = getattr(method, "parse_options", None)
    if parse is not None:
        parse(config.options)


def iter_cells(
    base: Mapping[str, Any], axes: Mapping[str, list[Any]], cases: Sequence[Mapping[str, Any]] = ()
) -> Iterator[Cell]:
    """Every case (or none) × the cartesian product of ``axes``, applied to ``base`` in file order,
    one cell at a time, each validated as it is built (its settings, its registry names, its
    method's options)."""
    known: dict[str, set[str]] = {}  # registry kind -> its names, read once per grid
    names = list(axes)
    numbered = list(enumerate(cases, start=1)) or [(None, {})]
    combos = itertools.product(numbered, itertools.product(*(axes[n] for n in names)))
    for index, ((case_number, case), combo) in enumerate(combos):
        axis_values = dict(zip(names, combo, strict=True))
        values = {**case, **axis_values}
        try:
            overrides = cell_overrides(case, case_number, axis_values)
            config = build_dataclass(RunConfig, with_preset(deep_merge(base, overrides)))
            check_registered_names(config, known)
            check_method_options(config)
        except (ConfigError, UnknownNameError) as exc:
            raise ConfigError(f"grid cell {index} ({', '.join(f'{k}={v}' for k, v in values.items())}): {exc}") from exc
        yield Cell(index, values, config)


def check_gpus_per_cell(value: Any, where: str = "--gpus-per-cell") -> float:
    """``value`` as the GPUs one cuda cell asks Ray for, or a one-line error naming ``where``: Ray
    takes a share of one GPU (0 < x <= 1, to 4 decimals) or whole GPUs, nothing in between."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (number and value > 0 and (value <= 1 or float(value).is_integer()) and round(value, 4) == value):
        raise ConfigError(
            f"{where} ({value!r}) must be a share of one GPU, 0 < x <= 1 with at most 4 decimals (0.25: four "
            "cells per GPU), or a whole number of GPUs (2, 3, ...)"
        )
    return float(value)
