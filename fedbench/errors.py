"""The errors a user can cause.

Every subclass carries a one-line message that names the bad value and how to
fix it. Only the command line (:mod:`fedbench.cli.common`) catches them and prints
one red line (exit code 2); any other exception is a bug, shown as one line too
unless ``--verbose`` asks for its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FedbenchError(Exception):
    """Base class of every error caused by user input rather than by a bug."""


class ConfigError(FedbenchError, ValueError):
    """A configuration value (flag, YAML key, option) is missing or out of range."""


class UnknownNameError(FedbenchError, LookupError):
    """A name (method, dataset, model, ...) is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], stray: str = "") -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close and not stray else ""
        listing = ", ".join(known) if known else "none installed"
        super().__init__(f"unknown {kind} '{name}'{hint}{stray}; known: {listing}")
        self.kind, self.name, self.known = kind, name, known


class PluginError(FedbenchError):
    """A registered plugin cannot be loaded or does not satisfy its contract."""


class DataNotFoundError(FedbenchError, FileNotFoundError):
    """A data set is not where fedbench looked for it."""


class DataCorruptError(FedbenchError):
    """A data file exists but cannot be read (truncated, wrong format)."""


class MemoryBudgetError(FedbenchError):
    """The requested work fits no device's memory budget."""


class TrackingError(FedbenchError):
    """The experiment tracker (MLflow) cannot be reached or written."""


class ExecutorError(FedbenchError):
    """A worker process or Ray actor of the process or Ray executor died or could not be reached."""


class CheckpointError(ConfigError):
    """A checkpoint file is missing, foreign, corrupt or from another config: it is refused before use."""


class DivergedError(FedbenchError):
    """Training produced a non-finite loss or model: the run failed and is not a result."""
