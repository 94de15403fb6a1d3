"""Building the config dataclasses from nested mappings (YAML, flags), checking each value's type."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from fedbench.errors import ConfigError


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check a YAML/CLI value against a field's annotation; convert ints to floats etc."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(path, value, inner)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} ({value!r}) must be true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} ({value!r}) must be an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path} ({value!r}) must be a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} ({value!r}) must be a string")
    if origin is tuple:  # YAML and --opt give lists; frozen options need tuples
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} ({value!r}) must be a list, e.g. [1, 2]")
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise ConfigError(f"{path} ({value!r}) must have {len(items)} items")
        return tuple(_coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, items, strict=True)))
    return value


def build_dataclass(cls: type, values: Mapping[str, Any], path: str = "") -> Any:
    """Construct ``cls`` from a nested mapping, rejecting unknown keys by name."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(values).__name__}")
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown and not types_by_name:
        raise ConfigError(f"{path or 'config'} takes no keys, got {', '.join(map(repr, unknown))}")
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{where}; "
            f"allowed: {', '.join(types_by_name)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        annotation = types_by_name[name]
        sub_path = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = build_dataclass(annotation, value or {}, sub_path)
        elif name == "options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"options must be a mapping of option name to value, got {value!r}")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _coerce(sub_path, value, annotation)
    return cls(**kwargs)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """``override`` wins; nested mappings are merged key by key.

    A section that ``base`` gives as a plain value (``data: synthetic``) while ``override`` sets
    keys in it (``--alpha 0.3``) is a :class:`ConfigError`: replacing it would silently train
    something other than what the file says."""
    merged = dict(base)
    for key, value in override.items():
        where = f"{path}{key}"
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = deep_merge(current, value, f"{where}.")
        elif isinstance(value, Mapping) and current is not None and key in merged:
            raise ConfigError(f"{where} must be a mapping, got {type(current).__name__} ({current!r}); "
                              f"write it as {key}: {{...}} with its keys")
        else:
            merged[key] = value
    return merged


def dotted_to_nested(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data.alpha": 0.1}`` -> ``{"data": {"alpha": 0.1}}``; ``None`` values are dropped."""
    nested: dict[str, Any] = {}
    for dotted, value in pairs.items():
        if value is None:
            continue
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested
