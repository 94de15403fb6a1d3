"""Checkpoints: the server state after a finished round, written atomically.

A checkpoint holds everything a resumed run needs to continue exactly as the
uninterrupted run would: the method's state (global model and whatever else
the method keeps: NeuLite's output modules, Oort's utilities, ...), the
context's run-long state (participation set, virtual clock), the index of the
last finished round, the rows of per-round metrics logged so far, and the run
key of the config it belongs to. No RNG state is needed: every random draw is
derived from (seed, purpose, round, client).

Files are written to a temporary name and renamed, so a crash while writing
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedbench.config import RunConfig
from fedbench.data import fedbench_cache_home
from fedbench.errors import ConfigError

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    run_key: str
    round_idx: int  # last finished round (0-based)
    method_state: dict[str, Any]
    context_state: dict[str, Any]
    metric_rows: list[dict[str, float]]
    config_params: dict[str, str]  # RunConfig.flat_params() of the run, to name a mismatch


def checkpoint_dir() -> Path:
    """Where checkpoints live: ``$FEDBENCH_CHECKPOINTS`` or ``~/.cache/fedbench/checkpoints``."""
    env = os.environ.get("FEDBENCH_CHECKPOINTS")
    if env:
        return Path(env).expanduser()
    return fedbench_cache_home() / "checkpoints"


def checkpoint_path(run_id: str) -> Path:
    return checkpoint_dir() / f"{run_id}.pt"


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Serialize to memory, write to ``path.tmp``, fsync, rename over ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_VERSION, **checkpoint.__dict__}, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _differences(saved: dict[str, str], current: dict[str, str]) -> str:
    ignored = ("tracking.", "data.data_dir")
    keys = sorted(k for k in set(saved) | set(current)
                  if not k.startswith(ignored) and saved.get(k) != current.get(k))
    return ", ".join(f"{k}: {saved.get(k)} -> {current.get(k)}" for k in keys[:5]) or "unknown fields"


def load(path: Path, config: RunConfig) -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file is a one-line :class:`ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}; the run cannot be resumed (it never finished a round?)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, unpickling error, ...
        raise ConfigError(f"checkpoint {path} is unreadable ({type(exc).__name__}); delete it and rerun") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        raise ConfigError(f"checkpoint {path} has an unknown format; delete it and rerun")
    if raw["run_key"] != config.run_key:
        raise ConfigError(
            f"checkpoint {path} was written by another config ({_differences(raw['config_params'], config.flat_params())}); "
            "rerun instead of resuming"
        )
    raw.pop("format")
    return Checkpoint(**raw)
