"""YAML in and out: config files read with one-line errors, configs written, ``--opt`` values parsed."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbench.errors import ConfigError

if TYPE_CHECKING:
    from fedbench.config.run import RunConfig


class _RepeatedKey(Exception):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


@functools.cache
def _unique_key_loader() -> type:
    """PyYAML's safe loader refusing a mapping that repeats a key (which it would resolve by
    silently keeping the last value, so `rounds: 20` ... `rounds: 200` runs 200)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue
                if key in seen:
                    raise _RepeatedKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml(path: str | Path, what: str = "config file", fix: str = "pass an existing YAML file to --config") -> dict[str, Any]:
    """Read a YAML file into a mapping, with one-line errors for every failure.

    ``what`` names the file in messages (``config file``, ``grid``) and ``fix`` says what to do
    when it is missing, so each command's message points at its own argument.
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; {fix}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "expected a YAML file"
        ) from exc
    try:
        loaded = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader subclass)
    except _RepeatedKey as exc:
        raise ConfigError(f"{what} {path} repeats the key '{exc.key}' at line {exc.line}; keep one (YAML "
                          "would silently use the last)") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}; fix its syntax") from exc
    if loaded is None:  # empty, or comments only: running the defaults instead would hide the mistake
        raise ConfigError(f"{what} {path} holds no settings (it is empty or only comments); {fix}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def to_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def parse_option_pairs(pairs: list[str]) -> dict[str, Any]:
    """``--opt key=value`` pairs; values are read as YAML scalars (0.1, true, [1, 2])."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--opt {pair!r} must look like key=value, e.g. --opt mu=0.01")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--opt {pair!r}: value is not a valid YAML scalar or list") from exc
    return options
