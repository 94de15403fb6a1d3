"""Named plugins found through ``importlib.metadata`` entry points.

Built-in methods, datasets, models, partitioners and fleet profiles are declared
in fedbench's own ``pyproject.toml`` under the same groups a third-party package
uses, so the plugin path is exercised by every run. Listing reads entry-point
metadata only; a plugin's code is imported (and validated) when it is loaded.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from fedbench.errors import PluginError, UnknownNameError

KINDS: dict[str, str] = {
    "methods": "method",
    "datasets": "dataset",
    "models": "model",
    "partitioners": "partitioner",
    "fleets": "fleet profile",
}


@dataclass(frozen=True)
class PluginInfo:
    """What ``fedbench list`` shows about one registered name."""

    name: str
    value: str
    distribution: str
    conflict: str | None = None  # set when several distributions register this name

    @property
    def builtin(self) -> bool:
        return self.distribution == "fedbench"


def _group(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(KINDS)}")
    return f"fedbench.{kind}"


def _entry_points(kind: str) -> dict[str, tuple[EntryPoint, ...]]:
    # Scanning every installed distribution costs ~0.1 s; the scan is cached per
    # (group, sys.path) so a plugin directory added at run time is still seen.
    return _scan(_group(kind), tuple(sys.path))


@functools.lru_cache(maxsize=64)
def _scan(group: str, search_path: tuple[str, ...]) -> dict[str, tuple[EntryPoint, ...]]:
    """Name -> its distinct registrations (more than one is a conflict, reported when the
    name is used, so one clash does not break every other name of the kind)."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=group):
        same = found.setdefault(ep.name, [])
        if all(other.value != ep.value for other in same):
            same.append(ep)
    return {name: tuple(eps) for name, eps in found.items()}


def distribution_name(ep: EntryPoint) -> str:
    """The installed distribution that declares ``ep`` (``fedbench`` for built-ins)."""
    return ep.dist.name if ep.dist is not None else "unknown"


def _conflict(kind: str, name: str, eps: tuple[EntryPoint, ...]) -> str | None:
    if len(eps) < 2:
        return None
    owners = " and ".join(f"'{distribution_name(ep)}' ({ep.value})" for ep in eps)
    return (
        f"{KINDS[kind]} '{name}' is registered by {len(eps)} distributions, {owners}; "
        "pip uninstall all but one of them"
    )


def stray_registration(kind: str, name: str) -> str:
    """Where ``name`` is registered under a ``fedbench...`` group fedbench does not read (a typo
    in a plugin's entry-point group), as a sentence to add to the unknown-name error."""
    expected = _group(kind)
    known_groups = {_group(k) for k in KINDS}
    for group in sorted(entry_points().groups):
        if group.startswith("fedbench") and group not in known_groups:
            for ep in entry_points(group=group):
                if ep.name == name:
                    return (f": distribution '{distribution_name(ep)}' registers it under the entry-point group "
                            f"'{group}', which fedbench does not read; rename the group to '{expected}' and "
                            "reinstall the plugin")
    return ""


def available(kind: str) -> list[PluginInfo]:
    """Registered names of a kind, without importing their code."""
    infos = []
    for name, eps in sorted(_entry_points(kind).items()):
        infos.append(
            PluginInfo(
                name=name,
                value=" | ".join(ep.value for ep in eps),
                distribution=" | ".join(distribution_name(ep) for ep in eps),
                conflict=_conflict(kind, name, eps),
            )
        )
    return infos


def load(kind: str, name: str, validate: Callable[[str, Any], None] | None = None) -> Any:
    """The object registered as ``name`` in ``fedbench.<kind>``; unknown names list the known ones.

    ``validate`` checks the loaded object against its contract (base class, hooks)
    and raises :class:`PluginError` with the reason, so a broken plugin fails at
    load time rather than in the middle of a run.
    """
    found = _entry_points(kind)
    if name not in found:
        raise UnknownNameError(KINDS[kind], name, found, stray_registration(kind, name))
    conflict = _conflict(kind, name, found[name])
    if conflict:
        raise PluginError(conflict)
    (ep,) = found[name]
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not look like a fedbench bug
        reason = (str(exc).strip().splitlines() or [""])[0]
        dist = distribution_name(ep)
        raise PluginError(
            f"{KINDS[kind]} '{name}' from distribution '{dist}' ({ep.value}) failed to import: "
            f"{type(exc).__name__}: {reason}; fix the plugin or pip uninstall {dist}"
        ) from exc
    if validate is not None:
        validate(name, obj)
    return obj
