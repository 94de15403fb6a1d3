"""The two checks every config section makes: a condition, and a value one of a known set."""

from __future__ import annotations

import difflib
from typing import Any

from fedbench.errors import ConfigError


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def require_one_of(path: str, value: Any, allowed: tuple[str, ...], what: str, more: str = "") -> None:
    """``value`` is one of ``allowed``, or a one-line error naming the closest one and all of them."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{path} ({value!r}) is not {what}{hint}; known: {', '.join(allowed)}{more}")
