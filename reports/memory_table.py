"""Rows of ``fedbench memory``: the memory model's peak per sub-model a method trains, and the PR
under a fleet, for one (model, data set, method) or a table of many.

Needs no data: known data sets' input shapes come from a small table (a data set not in it is
loaded once to read its shape). Everything is traced on the meta device (:mod:`fedbench.memory.model`).

**Many pairs at once.** One pair's sub-models are traced one after the other in one Python
thread; a table of several pairs (every model x every method: 250 sub-models) runs its pairs in
worker processes forked from this one, one per core by default, and brings their reports back
into this process's cache, so asking again in the same process costs nothing. Each worker also
writes its traces to the on-disk cache (:mod:`fedbench.tracing.cache`) that later processes read.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from fedbench import registry
from fedbench.config import DataConfig, FleetConfig, RunConfig, TrainConfig
from fedbench.core import setup
from fedbench.core.context import reference_peak_bytes
from fedbench.core.method import Workload, validate_method
from fedbench.errors import ConfigError, FedbenchError
from fedbench.execution.worker_start import worker_context
from fedbench.memory.model import MemoryModel, MemoryReport, optimizer_spec
from fedbench.models import build_model
from fedbench.simulation.fleet import make_fleet
from fedbench.tracing import cache as trace_cache
from fedbench.tracing._speedups.collector import collector_paused, load_compiler_before_fork
from fedbench.tracing.meta import building_on_meta
from fedbench.training.loop import cross_entropy_loss

# (input shape, classes) of the built-in data sets, so no data has to be read.
KNOWN_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "cinic10": ((3, 32, 32), 10),
    "cinic10-trainval": ((3, 32, 32), 10),
    "femnist": ((1, 28, 28), 62),
    "mini-imagenet": ((3, 84, 84), 100),
    "synthetic": ((3, 16, 16), 10),
}


@functools.lru_cache(maxsize=32)
def dataset_shape(dataset: str, data_dir: str | None) -> tuple[tuple[int, int, int], int]:
    """(input shape, classes); a data set not in KNOWN_SHAPES is loaded once per process to read it."""
    if dataset in KNOWN_SHAPES:
        return KNOWN_SHAPES[dataset]

    loaded = setup.load_dataset(RunConfig(data=DataConfig(dataset=dataset, data_dir=data_dir), clients_per_round=1))
    return tuple(loaded.input_shape), loaded.num_classes  # type: ignore[return-value]


class ReportsKey(NamedTuple):
    """Everything a method's memory reports depend on (``options``: the method options given, as
    canonical JSON, "" for its defaults; the local optimizer: the paper's SGD unless a preset
    names another)."""

    model_name: str
    shape: tuple[int, int, int]
    num_classes: int
    width: float
    method: str
    batch_size: int
    optimizer: str = "sgd"
    momentum: float = TrainConfig.momentum
    weight_decay: float = TrainConfig.weight_decay
    options: str = ""

    def train(self) -> TrainConfig:
        return TrainConfig(batch_size=self.batch_size, optimizer=self.optimizer, momentum=self.momentum,
                           weight_decay=self.weight_decay)


# ReportsKey -> ((sub-model name, MemoryReport), ...), the full model's cross-entropy peak.
# Building a method's sub-models costs more than looking their reports up; bounded, oldest out.
_REPORTS: OrderedDict[ReportsKey, tuple[tuple[tuple[str, Any], ...], int]] = OrderedDict()
REPORTS_CACHE_SIZE = 256


def workload_reports(
    model_name: str, shape: tuple[int, int, int], num_classes: int, width: float, method: str, batch_size: int,
    optimizer: str = "sgd", momentum: float = TrainConfig.momentum, weight_decay: float = TrainConfig.weight_decay,
    options: str = "",
) -> tuple[tuple[tuple[str, Any], ...], int]:
    """``(sub-model name, MemoryReport)`` of each workload of ``method`` (with ``options``, canonical
    JSON from :func:`options_key`; "" for its defaults) plus the full model, at the given local
    optimizer, and the full model's cross-entropy peak there. Cached for the process."""
    key = ReportsKey(model_name, tuple(shape), num_classes, width, method, batch_size,  # type: ignore[arg-type]
                     optimizer, momentum, weight_decay, options)
    found = _REPORTS.get(key)
    if found is None:
        found = _remember(key, _traced_reports(key))
    else:
        _REPORTS.move_to_end(key)
    return found


def _remember(key: ReportsKey, value: tuple[tuple[tuple[str, Any], ...], int]) -> tuple[tuple[tuple[str, Any], ...], int]:
    _REPORTS[key] = value
    while len(_REPORTS) > REPORTS_CACHE_SIZE:
        _REPORTS.popitem(last=False)
    return value


# One stored entry per table row group: a table whose traces are all stored builds no model at all.
TABLE_KIND = "memory-table"


def _table_entry(key: ReportsKey) -> tuple[str, tuple[Any, ...], tuple[Any, ...]]:
    """(kind, key, code) of a (model, method) pair's stored reports: its answer depends on the
    method's module (workloads, losses) and the model's builder, besides fedbench itself."""
    method_cls = registry.load("methods", key.method, validate=validate_method)
    builder = registry.load("models", key.model_name)
    return TABLE_KIND, tuple(key), (method_cls, builder)


def _decoded(stored: Any) -> tuple[tuple[tuple[str, Any], ...], int]:
    rows, full_peak = stored
    return tuple((name, MemoryReport(**report)) for name, report in rows), int(full_peak)


def _stored_reports(key: ReportsKey) -> tuple[tuple[tuple[str, Any], ...], int] | None:
    stored = trace_cache.peek(*_table_entry(key))
    return None if stored is None else _decoded(stored)


def _traced_reports(key: ReportsKey) -> tuple[tuple[tuple[str, Any], ...], int]:
    kind, parts, code = _table_entry(key)

    def compute() -> list[Any]:
        with collector_paused():  # building sub-models is a burst of short-lived objects too
            reports, full_peak = _reports_of(code[0], key)
        return [[[name, report.as_dict()] for name, report in reports], full_peak]

    return _decoded(trace_cache.cached(kind, parts, code, compute))


def _reports_of(method_cls: Any, key: ReportsKey) -> tuple[tuple[tuple[str, Any], ...], int]:
    with building_on_meta():  # the model and its sub-models: shapes are all the memory model reads
        model = build_model(key.model_name, key.shape, key.num_classes, width=key.width)
        workloads = list(method_cls.workloads(model, method_cls.parse_options(json.loads(key.options or "{}"))))
    if all(w.name != "full" for w in workloads):  # the full model as the reference row
        workloads.append(Workload("full", model))
    memory = MemoryModel(optimizer_spec(key.train()))
    reports = tuple(
        (w.name, memory.report(w.model, w.trainable, key.batch_size, key.shape,
                               loss_fn=w.loss_fn or cross_entropy_loss))
        for w in workloads
    )
    return reports, memory.peak_bytes(model, batch_size=key.batch_size, input_shape=key.shape)


def options_key(method: str, options: Mapping[str, Any] | None) -> str:
    """``options`` as the canonical JSON of :class:`ReportsKey`, checked against ``method``'s
    options first, so that a bad key or value is one line before anything is traced."""
    if not options:
        return ""
    method_cls = registry.load("methods", method, validate=validate_method)
    method_cls.parse_options(options)
    return json.dumps(dict(options), sort_keys=True)


def clear_caches() -> None:
    """Forget every remembered report (tests; a process that changes its methods)."""
    _REPORTS.clear()


def memory_rows(
    model_name: str,
    dataset: str,
    batch_size: int,
    method: str,
    fleet_profile: str,
    width: float = 1.0,
    clients: int = 100,
    seed: int = 42,
    low_mb: int = 100,
    high_mb: int = 900,
    data_dir: str | None = None,
    train: TrainConfig | None = None,
    method_options: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per workload of ``method`` (with ``method_options``, else its defaults) on
    ``model_name``: peak, breakdown and PR under the fleet. ``train``: the local optimizer (its
    batch size is ``batch_size``'s); None: the paper's SGD."""

    train = dataclasses.replace(train or TrainConfig(), batch_size=batch_size)  # validates the batch size
    fleet_config = FleetConfig(profile=fleet_profile, low_mb=low_mb, high_mb=high_mb)
    shape, num_classes = dataset_shape(dataset, data_dir)
    reports, _ = workload_reports(model_name, shape, num_classes, width, method, batch_size,
                                  train.optimizer, train.momentum, train.weight_decay,
                                  options_key(method, method_options))
    fleet = make_fleet(fleet_config, clients, seed,
                       functools.partial(reference_peak_bytes, model_name, shape, num_classes, width))
    return [
        {
            "submodel": name,
            "peak_bytes": found.peak_bytes,
            "params_bytes": found.params_bytes,
            "grads_bytes": found.grads_bytes,
            "optimizer_bytes": found.optimizer_bytes,
            "activations_bytes": found.activations_bytes,
            "pr": fleet.participation_rate(found.peak_bytes),
        }
        for name, found in reports
    ]


def memory_table(
    pairs: Sequence[tuple[str, str, str]], batch_size: int, fleet_profile: str, *, jobs: int = 0,
    trains: Mapping[str, TrainConfig] | None = None, method_options: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`memory_rows` of every ``(model, data set, method)`` in ``pairs`` (``options``: its
    keyword options, ``width`` to ``data_dir``), each row also naming its model, data set and
    method; pairs are traced in ``jobs`` worker processes (0: one per core, 1: here, in turn).
    ``trains`` gives a method its own batch size and optimizer (a preset's); the others train at
    ``batch_size`` with the paper's SGD. ``method_options`` gives a method options other than its
    defaults."""
    trains, method_options = dict(trains or {}), dict(method_options or {})

    if jobs < 0:
        raise ConfigError(f"jobs ({jobs}) must be >= 0 (0: one worker per core, 1: no workers)")
    width, data_dir = options.get("width", 1.0), options.get("data_dir")
    TrainConfig(batch_size=batch_size)
    FleetConfig(profile=fleet_profile, low_mb=options.get("low_mb", 100), high_mb=options.get("high_mb", 900))
    if not 0 < width <= 1:
        raise ConfigError(f"model width ({width}) must be in (0, 1]")
    for name in dict.fromkeys(method for _, _, method in pairs):  # unknown names fail here, at once
        registry.load("methods", name, validate=validate_method)
    for name in dict.fromkeys(model for model, _, _ in pairs):
        registry.load("models", name)
    keys = []
    for model, dataset, method in pairs:
        shape, num_classes = dataset_shape(dataset, data_dir)
        train = trains.get(method, TrainConfig(batch_size=batch_size))
        keys.append(ReportsKey(model, shape, num_classes, width, method, train.batch_size, train.optimizer,
                               train.momentum, train.weight_decay, options_key(method, method_options.get(method))))
    trace_all(keys, jobs)
    rows = []
    for model, dataset, method in pairs:
        train = trains.get(method, TrainConfig(batch_size=batch_size))
        rows += [{"model": model, "dataset": dataset, "method": method, **row}
                 for row in memory_rows(model, dataset, train.batch_size, method, fleet_profile, train=train,
                                        method_options=method_options.get(method), **options)]
    return rows


def trace_all(keys: Sequence[ReportsKey], jobs: int = 0) -> None:
    """Put the reports of every key in this process's cache, tracing the missing ones in ``jobs``
    worker processes (0: one per core) when there are several."""
    missing = []
    for key in dict.fromkeys(keys):
        if key in _REPORTS:
            continue
        stored = _stored_reports(key)
        if stored is None:
            missing.append(key)
        else:
            _remember(key, stored)
    workers = min(jobs or os.cpu_count() or 1, len(missing))
    if workers <= 1:
        _collect(missing, map(_traced_in_worker, missing))
        return
    from concurrent.futures import ProcessPoolExecutor

    load_compiler_before_fork()  # each worker would import it otherwise
    # In order, model by model: the workers take the next pair as they finish one. (Keeping each
    # model's pairs in one worker, which then builds it and warms its kernels once, measured no
    # faster: two workers on two cores each run ~25 % slower than one alone, whatever they share.)
    with ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(),
                             initializer=_start_worker) as pool:
        _collect(missing, pool.map(_traced_in_worker, missing))


def _collect(keys: Sequence[ReportsKey], answers: Iterator[tuple[str, Any]]) -> None:
    """Remember each key's answer, in order; the first user error fails the table naming its pair."""
    from concurrent.futures.process import BrokenProcessPool

    for done, key in enumerate(keys):
        try:
            verdict, value = next(answers)
        except BrokenProcessPool:  # killed, out of memory: which pair it was holding is unknown
            raise FedbenchError(f"a worker process died; {len(keys) - done} of {len(keys)} (model, method) "
                                "pairs were not traced; try --jobs 1") from None
        if verdict == "error":
            raise FedbenchError(f"{key.model_name} / {key.method}: {value}")
        _remember(key, value)


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)  # meta traces compute nothing; the cores belong to the workers


def _worker_context() -> Any:
    """Fork where the platform allows it, as torch's DataLoader does: a worker starts in ~10 ms
    with this process's modules and caches, where a fresh one would import torch (1.5–2 s, most of
    what a table of every model and method costs a worker). Workers touch only the meta device
    and run one thread, so no thread pool of this process is needed in them."""
    import multiprocessing

    if "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin":
        return multiprocessing.get_context("fork")

    return worker_context()


def _traced_in_worker(key: ReportsKey) -> tuple[str, Any]:
    """A worker's answer: ("ok", reports) or ("error", the one-line reason); a user error travels
    as text because not every FedbenchError can be rebuilt from its pickled arguments."""
    try:
        return "ok", workload_reports(*key)
    except FedbenchError as exc:
        return "error", str(exc)
