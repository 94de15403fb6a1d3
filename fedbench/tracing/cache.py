"""Answers of meta-device traces (memory reports, step FLOPs) kept on disk between processes.

A trace gives the same answer every time the same code traces the same sub-model, yet every
process paid for it again: each cell of a sweep, each ``fedbench memory``, each run before its
first round ends. A process that finds all its traces here does no meta work for them.

**Key.** A digest of everything the answer depends on: the caller's key (model signature,
trainable names, batch, input shape, dtype, optimizer, loss), the torch and fedbench versions,
and the source text of fedbench itself and of every other module that defines a layer, loss or
optimizer taking part (``methods/``, a plugin, a test). Editing any of those files makes new
keys, so an editable install or a plugin under development never reads a stale answer and
nothing has to be invalidated by hand. A key with a part that has no stable text (a lambda, a
class defined in a REPL, an object printed with its address) is not cached.

**Where.** ``$FEDBENCH_TRACE_CACHE``, else ``$XDG_CACHE_HOME/fedbench/traces``
(``~/.cache/fedbench/traces``); ``FEDBENCH_TRACE_CACHE=off`` turns it off. One small JSON file
per entry, written to a temporary name and renamed, so the parallel runs of a sweep share it
safely; a file that cannot be read or written is skipped (logged at debug level), never an error.

**Bounded.** Every code edit makes new keys, so old entries would pile up. A hit marks its entry
used (its modification time); the first time a process adds an entry of a kind it counts that
kind's entries and, above :data:`MAX_ENTRIES`, deletes the least recently used down to three
quarters of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedbench import __version__
from fedbench.data import fedbench_cache_home
from fedbench.tracing._speedups.collector import trace_paused

log = logging.getLogger(__name__)

ENV = "FEDBENCH_TRACE_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none"})
FORMAT = 1  # bump when the stored layout changes
MAX_ENTRIES = 2000  # per kind (a memory report is ~8 KB: ~16 MB); a full memory sweep stores ~150
_CHECKED: set[Path] = set()  # kind folders this process has bounded already


class _Unstable(Exception):
    """A key part whose text could differ between processes describing the same thing."""


def cache_dir() -> Path | None:
    """The folder entries live in, or None when the cache is turned off."""
    env = os.environ.get(ENV, "").strip()
    if env.lower() in OFF:
        return None
    if env:
        return Path(env).expanduser()
    return fedbench_cache_home() / "traces"


def _text(value: Any) -> str:
    """Text that names ``value`` the same way in every process (raises _Unstable otherwise)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_text(v) for v in value) + ")"
    if isinstance(value, (frozenset, set)):
        return "{" + ", ".join(sorted(_text(v) for v in value)) + "}"
    if inspect.ismethod(value):  # a bound method computes with its object's state
        return f"{_text(value.__self__)}.{value.__name__}"
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        name = f"{value.__module__}.{value.__qualname__}"
        if "<" in name:  # <lambda>, <locals>: two different functions can share the name
            raise _Unstable(name)
        return name
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if "<" in kind:
        raise _Unstable(kind)
    if dataclasses.is_dataclass(value):  # every field, also those its repr leaves out
        fields = ", ".join(f"{f.name}={_text(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{kind}({fields})"
    described = f"{kind}:{value!r}"
    if " at 0x" in described:
        raise _Unstable(described)
    return described


def _defining_modules(value: Any) -> set[str]:
    """Modules whose code decides what ``value`` computes: the classes of a model's layers, the
    module of a function, the class of a callable object (and of dataclass fields holding any)."""
    if isinstance(value, nn.Module):
        return {type(m).__module__ for m in value.modules()}
    if inspect.ismethod(value):
        return {value.__module__} | _defining_modules(value.__self__)
    if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
        return {value.__module__}
    found = {type(value).__module__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            found |= _defining_modules(getattr(value, item.name))
    return found


@cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # fedbench/: this module lives in fedbench/tracing/


@cache
def _package_digest() -> str:
    """fedbench's own source: any edit to the tracer, the models or the engine changes every key."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_ROOT)).encode())
        digest.update(_file_digest(str(path)).encode())
    return digest.hexdigest()


def _module_digest(name: str) -> str:
    if name == "builtins" or name.split(".")[0] == "torch":
        return name  # torch's version is in the key
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if not path or not os.path.isfile(path):
        raise _Unstable(f"module {name} has no source file")
    if Path(path).resolve().is_relative_to(_PACKAGE_ROOT):
        return name  # the package digest covers it (fedbench.methods lives outside, in methods/)
    return f"{name}:{_file_digest(path)}"


def _digest(kind: str, key: Iterable[Any], code: Iterable[Any]) -> tuple[str, str] | None:
    """(file name, key text) of an entry, or None when the key cannot be named stably."""

    try:
        key_text = _text(tuple(key))
        modules = set().union(*(_defining_modules(obj) for obj in code))
        code_text = ";".join(sorted(_module_digest(name) for name in modules))
    except _Unstable as exc:
        log.debug("trace of %s not cached: %s", kind, exc)
        return None
    full = "\n".join((f"format {FORMAT}", kind, key_text, f"torch {torch.__version__}",
                      f"fedbench {__version__} {_package_digest()}", code_text))
    return hashlib.sha256(full.encode()).hexdigest(), full


def _read(path: Path, full_key: str) -> Any:
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.debug("unreadable trace cache entry %s: %s", path, exc)
        return None
    if not isinstance(stored, dict) or stored.get("key") != full_key:
        return None
    try:
        os.utime(path)  # used now: the last entry to go when the folder is bounded
    except OSError:
        pass
    return stored.get("value")


def _bound(folder: Path) -> None:
    """Delete the least recently used entries of ``folder`` if it holds more than MAX_ENTRIES."""
    if folder in _CHECKED:
        return
    _CHECKED.add(folder)
    try:
        entries = [(e.stat().st_mtime, e.path) for e in os.scandir(folder) if e.name.endswith(".json")]
    except OSError:
        return
    if len(entries) <= MAX_ENTRIES:
        return
    entries.sort()
    for _, path in entries[: len(entries) - MAX_ENTRIES * 3 // 4]:
        try:
            os.remove(path)
        except OSError:  # another process removed it first, or it is not ours to remove
            pass
    log.debug("trace cache %s bounded: %d entries removed", folder, len(entries) - MAX_ENTRIES * 3 // 4)


def _write(path: Path, full_key: str, value: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            json.dump({"key": full_key, "value": value}, handle)
        os.replace(handle.name, path)
    except OSError as exc:
        log.debug("trace cache entry %s not written: %s", path, exc)
        return
    _bound(path.parent)


def peek(kind: str, key: Iterable[Any], code: Iterable[Any]) -> Any:
    """The stored answer for ``key`` (as :func:`cached` would find it), else None; computes nothing,
    so a caller can learn what is left to trace before starting workers for it."""
    folder = cache_dir()
    named = _digest(kind, key, code) if folder is not None else None
    if named is None:
        return None
    digest, full_key = named
    return _read(folder / kind / f"{digest}.json", full_key)


def cached(kind: str, key: Iterable[Any], code: Iterable[Any], compute: Callable[[], Any]) -> Any:
    """``compute()``, or the answer a process with the same code stored for the same key.

    ``key`` holds every input of the trace; ``code`` the objects whose defining modules decide
    its answer (model, loss, optimizer). ``compute`` must return JSON data (a dict of numbers, a
    number) and, like every trace, depend on nothing but those. It runs with the garbage
    collector held off (:mod:`fedbench.tracing._speedups.collector`): a trace's objects are freed by
    reference counting.
    """
    def trace() -> Any:
        with trace_paused():
            return compute()

    folder = cache_dir()
    named = _digest(kind, key, code) if folder is not None else None
    if named is None:
        return trace()
    digest, full_key = named
    path = folder / kind / f"{digest}.json"
    found = _read(path, full_key)
    if found is None:
        found = trace()
        _write(path, full_key, found)
    return found
