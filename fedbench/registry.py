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

    @property
    def builtin(self) -> bool:
        return self.distribution == "fedbench"


def _group(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; expected one of {', '.join(KINDS)}")
    return f"fedbench.{kind}"


def _entry_points(kind: str) -> dict[str, EntryPoint]:
    # Scanning every installed distribution costs ~0.1 s; the scan is cached per
    # (group, sys.path) so a plugin directory added at run time is still seen.
    return _scan(_group(kind), tuple(sys.path))


@functools.lru_cache(maxsize=64)
def _scan(group: str, search_path: tuple[str, ...]) -> dict[str, EntryPoint]:
    kind = group.removeprefix("fedbench.")
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        previous = found.get(ep.name)
        if previous is not None and previous.value != ep.value:
            raise PluginError(
                f"{KINDS[kind]} '{ep.name}' is registered twice ({previous.value} and {ep.value}); "
                "uninstall one of the distributions"
            )
        found[ep.name] = ep
    return found


def available(kind: str) -> list[PluginInfo]:
    """Registered names of a kind, without importing their code."""
    infos = []
    for name, ep in sorted(_entry_points(kind).items()):
        dist = ep.dist.name if ep.dist is not None else "unknown"
        infos.append(PluginInfo(name=name, value=ep.value, distribution=dist))
    return infos


def load(kind: str, name: str, validate: Callable[[str, Any], None] | None = None) -> Any:
    """The object registered as ``name`` in ``fedbench.<kind>``; unknown names list the known ones.

    ``validate`` checks the loaded object against its contract (base class, hooks)
    and raises :class:`PluginError` with the reason, so a broken plugin fails at
    load time rather than in the middle of a run.
    """
    found = _entry_points(kind)
    if name not in found:
        raise UnknownNameError(KINDS[kind], name, found)
    try:
        obj = found[name].load()
    except Exception as exc:  # a broken plugin must not look like a fedbench bug
        raise PluginError(
            f"{KINDS[kind]} '{name}' ({found[name].value}) failed to import: {type(exc).__name__}: {exc}"
        ) from exc
    if validate is not None:
        validate(name, obj)
    return obj
