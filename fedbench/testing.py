"""``check_method``: the conformance kit every method passes, built-in or plugin.

A plugin author calls it from a test::

    from fedbench.testing import check_method
    from my_package import MyMethod

    def test_my_method_follows_the_contract():
        check_method(MyMethod)

It runs the method on a tiny generated data set (a few seconds on a laptop CPU) and checks
what the engine relies on but cannot see at load time:

1. **two rounds** run with a finite training loss and give a finite evaluation;
2. **declared state**: no public attribute outside ``server_state``/``client_state`` changes
   after ``__init__`` (it would be lost on resume and in worker processes) — modules that only
   share tensors with declared state are views and may change with it;
3. **resumed = uninterrupted**: one round, a checkpoint written to disk and read back into a
   fresh method, then the second round, gives the uninterrupted run's metrics and state bit for bit;
4. **options round-trip** through YAML and ``--opt key=value``;
5. **serial = process executor**: the same two rounds with local updates in two worker
   processes give the same metrics (needs the method registered under an entry point, since
   workers load it by name; skipped otherwise and said so in the report).

Each failure is an :class:`AssertionError` or :class:`~fedbench.errors.PluginError` whose first
line names the check and the culprit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedbench import engine, registry
from fedbench.config import RunConfig, make_config, parse_option_pairs
from fedbench.core import checkpoint
from fedbench.core.method import Method, validate_method
from fedbench.errors import PluginError
from fedbench.execution.executors import make_executor


@dataclass
class CheckReport:
    """What :func:`check_method` checked, and what it skipped and why."""

    method: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def kit_config(name: str, options: Mapping[str, Any] | None = None, **overrides: Any) -> RunConfig:
    """The tiny run the kit uses: 8 clients of the generated data set, 3 per round, a quarter-width
    CNN, the ``relative`` fleet (so width and depth methods get more than one kind of work)."""
    values: dict[str, Any] = {
        "method": name,
        "options": dict(options or {}),
        "data": {"dataset": "synthetic", "num_clients": 8, "partition": "dirichlet"},
        "train": {"local_epochs": 1, "batch_size": 32},
        "model": {"name": "cnn", "width": 0.25},
        "fleet": {"profile": "relative"},
        "clients_per_round": 3,
        "rounds": 2,
        "threads": 1,
        "tracking": {"enabled": False},
    }
    values.update(overrides)
    return make_config(overrides=values)


def check_method(
    cls: type[Method], options: Mapping[str, Any] | None = None, *, processes: bool = True, **overrides: Any
) -> CheckReport:
    """Run the conformance checks on ``cls`` (with ``options``; ``overrides`` change the tiny run,
    e.g. ``model={"name": "resnet18", "width": 0.125}``). ``processes=False`` skips the worker check."""
    name = registered_name(cls)
    validate_method(name or cls.__name__, cls)
    config = kit_config(name or "fedavg", options, **overrides)
    report = CheckReport(cls.__name__)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)  # as in a run: CPU kernels reduce in a thread-count-dependent order
    try:
        return _check_all(cls, config, name, processes, report)
    finally:
        torch.set_num_threads(threads)


def _check_all(cls: type[Method], config: RunConfig, name: str | None, processes: bool,
               report: CheckReport) -> CheckReport:
    metrics, final = _two_rounds(cls, config)
    report.passed += ["two rounds, finite loss", "declared state"]
    _check_resume(cls, config, metrics, final)
    report.passed.append("resumed = uninterrupted")
    _check_options(cls, config)
    report.passed.append("options round-trip")
    if not processes:
        report.skipped["serial = process executor"] = "processes=False"
    elif name is None:
        report.skipped["serial = process executor"] = "not registered under the fedbench.methods entry point"
    else:
        _check_processes(cls, config, metrics)
        report.passed.append("serial = process executor")
    return report


def registered_name(cls: type[Method]) -> str | None:
    """The ``fedbench.methods`` entry-point name under which ``cls`` is installed, if any."""
    for info in registry.available("methods"):
        try:
            if registry.load("methods", info.name) is cls:
                return info.name
        except Exception:  # another broken plugin must not stop this check
            continue
    return None


# ------------------------------------------------------------------ the checks
def _build(cls: type[Method], config: RunConfig) -> Method:
    ctx, _ = engine.prepare(config)
    return cls(ctx, cls.parse_options(config.options))


def _round(method: Method, round_idx: int) -> dict[str, float]:
    scheduled = engine.evaluation_rounds(method)
    result = engine.run_round(method, round_idx, evaluate=round_idx in scheduled)
    return {k: v for k, v in result.metrics.items() if not k.startswith("time/")}


def _two_rounds(cls: type[Method], config: RunConfig) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Two rounds, watching every undeclared public attribute around each one."""
    method = _build(cls, config)
    metrics = []
    for round_idx in range(config.rounds):
        before = undeclared_fingerprint(method)
        metrics.append(_round(method, round_idx))
        after = undeclared_fingerprint(method)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if changed:
            raise PluginError(
                f"{cls.__name__}: round {round_idx + 1} changed {', '.join(changed)}, which is not declared "
                "state (lost on resume and in worker processes); add it to server_state or client_state, "
                "or prefix it with _ if it is a cache"
            )
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert losses and all(math.isfinite(x) for x in losses), f"{cls.__name__}: training losses {losses} are not finite"
    final = metrics[-1]
    assert "eval/accuracy" in final and math.isfinite(final["eval/accuracy"]), (
        f"{cls.__name__}: the last round logged no finite eval/accuracy ({final.get('eval/accuracy')})")
    return metrics, _state_fingerprint(method)


def _check_resume(cls: type[Method], config: RunConfig, expected: list[dict[str, float]],
                  final: dict[str, Any]) -> None:
    first = _build(cls, config)
    rows = [{"round": 0, **_round(first, 0)}]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "check.ckpt"
        checkpoint.save(path, engine.snapshot(first, 0, rows))
        saved = checkpoint.load(path, config)
    resumed = _build(cls, config)
    engine.restore(resumed, saved)
    got = [rows[0] | {}, _round(resumed, 1)]
    got[0].pop("round")
    assert got == expected, f"{cls.__name__}: resumed run's metrics differ from the uninterrupted run's"
    assert _state_fingerprint(resumed) == final, f"{cls.__name__}: resumed run's state differs from the uninterrupted run's"


def _check_options(cls: type[Method], config: RunConfig) -> None:
    import yaml


    parsed = cls.parse_options(config.options)
    values = _plain(dataclasses.asdict(parsed))
    via_yaml = cls.parse_options(yaml.safe_load(yaml.safe_dump(values)))
    assert via_yaml == parsed, f"{cls.__name__}: options {values} do not survive a YAML round trip"
    pairs = [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
             for key, value in values.items()]
    via_opt = cls.parse_options(parse_option_pairs(pairs))
    assert via_opt == parsed, f"{cls.__name__}: options {values} do not survive --opt {' --opt '.join(pairs)}"


def _check_processes(cls: type[Method], config: RunConfig, expected: list[dict[str, float]]) -> None:
    config = dataclasses.replace(config, executor="process", workers=2, executor_threads=1)
    method = _build(cls, config)
    executor = make_executor(config)
    try:
        executor.start(method)
        scheduled = engine.evaluation_rounds(method)
        got = []
        for round_idx in range(config.rounds):
            result = engine.run_round(method, round_idx, executor, evaluate=round_idx in scheduled)
            got.append({k: v for k, v in result.metrics.items() if not k.startswith("time/")})
    finally:
        executor.close()
    assert got == expected, f"{cls.__name__}: the process executor's metrics differ from the serial run's"


# -------------------------------------------------------------- fingerprints
def undeclared_fingerprint(method: Method) -> dict[str, str]:
    """A digest of every public attribute that is not declared state, looking into tensors and
    modules; tensors shared with declared state (views such as DepthFL's full exit model) are skipped."""
    declared = set(method.state_names())
    shared = {id(t) for name in declared for t in _tensors(getattr(method, name, None))}
    digests = {}
    for name, value in vars(method).items():
        if name.startswith("_") or name in declared or name in ("ctx", "options"):
            continue
        digest = hashlib.sha256()
        _feed(digest, value, shared, set())
        digests[name] = digest.hexdigest()
    return digests


def _state_fingerprint(method: Method) -> dict[str, str]:
    digests = {}
    for name, value in method.state_values().items():
        digest = hashlib.sha256()
        _feed(digest, value, set(), set())
        digests[name] = digest.hexdigest()
    return digests


def _tensors(value: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, nn.Module):
        return [*value.parameters(), *value.buffers()]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v, seen)]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [t for v in value for t in _tensors(v, seen)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name), seen)]
    return []


def _feed(digest: Any, value: Any, shared: set[int], seen: set[int]) -> None:
    """Hash ``value``'s content into ``digest`` (cycles and shared tensors visited once / skipped)."""
    if isinstance(value, torch.Tensor):
        if id(value) not in shared and value.device.type == "meta":  # shapes only (memory-model sub-models)
            digest.update(repr((tuple(value.shape), value.dtype)).encode())
        elif id(value) not in shared:
            digest.update(repr((tuple(value.shape), value.dtype)).encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return
    if isinstance(value, (type(None), bool, int, float, complex, str, bytes)):
        digest.update(repr(value).encode())
        return
    if id(value) in seen:  # containers, modules and objects: once each (shared or cyclic)
        return
    seen.add(id(value))
    if isinstance(value, nn.Module):
        for key, tensor in [*value.named_parameters(), *value.named_buffers()]:
            digest.update(key.encode())
            _feed(digest, tensor, shared, seen)
        return
    if isinstance(value, np.ndarray):
        digest.update(value.tobytes())
    elif isinstance(value, Mapping):
        for key, item in value.items():
            digest.update(repr(key).encode())
            _feed(digest, item, shared, seen)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed(digest, item, shared, seen)
    elif isinstance(value, (set, frozenset)):
        digest.update(repr(sorted(map(repr, value))).encode())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if not f.compare:  # not part of the value by the class's own account (a cache)
                continue
            digest.update(f.name.encode())
            _feed(digest, getattr(value, f.name), shared, seen)
    elif callable(value):
        digest.update(getattr(value, "__qualname__", type(value).__qualname__).encode())
    else:
        digest.update(repr(value).encode())


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
