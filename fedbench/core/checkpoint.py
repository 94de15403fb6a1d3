"""Checkpoints: the server state after a finished round, in a file that cannot run code or lie.

A checkpoint holds everything a resumed run needs to continue exactly as the uninterrupted
run would: the method's declared state (:attr:`fedbench.core.method.Method.server_state` and
``client_state``, as plain data: :mod:`fedbench.core.state`), the context's run-long state
(participation set, virtual clock), the index of the last finished round and the rows of
per-round metrics logged so far. No RNG state is needed: every random draw is derived from
(seed, purpose, round, client).

The file is a text header and a payload::

    fedbench-checkpoint 2\\n
    {"run_key": ..., "round_idx": ..., "payload_bytes": ..., "payload_sha256": ..., ...}\\n
    <payload: torch.save of tensors and plain containers>

Every check happens before the payload is unpickled: the magic line and format version, the
run key (a checkpoint of another config is refused, naming the difference), the payload's
length and SHA-256 (a truncated or bit-flipped file is refused). The payload is then read
with ``torch.load(weights_only=True)``, which builds tensors and plain containers only, so
even a file crafted to pass the checks cannot execute code. Any failed check is one
:class:`~fedbench.errors.CheckpointError` line naming the file.

Files are written to a temporary name, flushed and renamed, so a crash while writing leaves
the previous checkpoint intact. A run's checkpoint is removed once the run is recorded
FINISHED (``tracking.keep_checkpoint`` keeps it); ``fedbench checkpoints`` lists and prunes.
Listing runs :func:`verify`, the checks of :func:`load` that need no config: magic line,
format, header, payload length and SHA-256 (each payload is read once; checkpoints weigh tens
of MB at most). A file that :func:`load` would refuse for any of these is listed unreadable
with its reason, and ``prune --unreadable`` removes it. Two refusals of :func:`load` need
more than the file and are left to it: a run key of another config (needs the run's config)
and a payload that passes the checksum but is not fedbench's (needs unpickling).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fedbench.config import RunConfig
from fedbench.data import fedbench_cache_home
from fedbench.errors import CheckpointError, PluginError

FORMAT_VERSION = 2
MAGIC = b"fedbench-checkpoint"
SUFFIX = ".ckpt"
_MAX_HEADER_BYTES = 1 << 20  # a header holds the run key and the config's params: far below this


@dataclass
class Checkpoint:
    run_key: str
    round_idx: int  # last finished round (0-based)
    method_state: dict[str, Any]  # fedbench.core.state.encode of each declared attribute
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
    return checkpoint_dir() / f"{run_id}{SUFFIX}"


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Serialize to memory, write header + payload to ``path.tmp``, fsync, rename over ``path``."""
    buffer = io.BytesIO()
    payload = {"method_state": checkpoint.method_state, "context_state": checkpoint.context_state,
               "metric_rows": checkpoint.metric_rows}
    try:
        torch.save(payload, buffer)
    except Exception as exc:  # an undeclared kind of value slipped past fedbench.core.state.encode
        raise PluginError(f"the method's state cannot be checkpointed: {exc}") from exc
    data = buffer.getvalue()
    header = {
        "format": FORMAT_VERSION, "run_key": checkpoint.run_key, "round_idx": checkpoint.round_idx,
        "method": checkpoint.config_params.get("method", "?"), "payload_bytes": len(data),
        "payload_sha256": hashlib.sha256(data).hexdigest(), "config_params": checkpoint.config_params,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC + b" %d\n" % FORMAT_VERSION)
        handle.write(json.dumps(header, sort_keys=True).encode() + b"\n")
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The verified-format header of ``path`` and the payload's offset; nothing is unpickled."""
    _check_is_file(path)
    with open(path, "rb") as handle:
        header = _read_header(handle, path)
        return header, handle.tell()


def _check_is_file(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; the run cannot be resumed: it finished no round, or its "
                              "checkpoint is in another folder (set FEDBENCH_CHECKPOINTS as when it ran)")


def _read_header(handle: BinaryIO, path: Path) -> dict[str, Any]:
    """Read the magic line and the header from ``handle`` (at the file's start), leaving it at the payload."""
    first = handle.readline(len(MAGIC) + 16)
    if not first.startswith(MAGIC + b" "):
        raise CheckpointError(f"checkpoint {path} is not a fedbench checkpoint of this version "
                              "(foreign or from an older fedbench); delete it and rerun")
    try:
        version = int(first[len(MAGIC) + 1:].strip())
        header = json.loads(handle.readline(_MAX_HEADER_BYTES))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} has a damaged header; delete it and rerun") from exc
    if version != FORMAT_VERSION or not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format {version}, this fedbench reads {FORMAT_VERSION}; "
                              "delete it and rerun")
    round_idx = header.get("round_idx")
    if not isinstance(round_idx, int) or isinstance(round_idx, bool) or round_idx < 0:
        raise CheckpointError(f"checkpoint {path} has a damaged header (no finished round); delete it and rerun")
    return header


def _check_payload(path: Path, header: dict[str, Any], data: bytes) -> None:
    """Refuse a payload of the wrong length or SHA-256, before anything of it is unpickled."""
    expected = header.get("payload_bytes")
    if len(data) != expected:
        raise CheckpointError(f"checkpoint {path} is corrupt (its payload is {len(data)} bytes, the header says "
                              f"{expected}: truncated or padded); delete it and rerun")
    if hashlib.sha256(data).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"checkpoint {path} is corrupt (its payload fails the checksum); delete it and rerun")


def _verified(path: Path, config: RunConfig | None) -> tuple[dict[str, Any], bytes]:
    """The header and payload bytes of ``path`` after every check that comes before unpickling:
    magic line, format and header, the run key (only when ``config`` is given), payload length
    and SHA-256. Header and payload are read through one open file, so a checkpoint that its
    running run replaces meanwhile (a rename over the path) is never seen as a mix of two files."""
    _check_is_file(path)
    with open(path, "rb") as handle:
        header = _read_header(handle, path)
        if config is not None and header.get("run_key") != config.run_key:
            saved = header.get("config_params") if isinstance(header.get("config_params"), dict) else {}
            raise CheckpointError(
                f"checkpoint {path} was written by another config ({_differences(saved, config.flat_params())}); "
                "rerun instead of resuming"
            )
        data = handle.read()
    _check_payload(path, header, data)
    return header, data


def verify(path: Path) -> dict[str, Any]:
    """The header of ``path`` once the checks :func:`load` makes without a config pass: magic
    line, format, header, payload length and SHA-256 (the payload is read and hashed, never
    unpickled). Anything wrong is the same one-line :class:`CheckpointError` :func:`load` raises."""
    return _verified(path, None)[0]


def load(path: Path, config: RunConfig) -> Checkpoint:
    """Read and verify a checkpoint; anything wrong is a one-line :class:`CheckpointError`."""
    header, data = _verified(path, config)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return Checkpoint(header["run_key"], int(header["round_idx"]), payload["method_state"],
                          payload["context_state"], payload["metric_rows"], header["config_params"])
    except Exception as exc:  # checksum right, content not a fedbench payload (hand-made file)
        raise CheckpointError(f"checkpoint {path} holds data fedbench did not write "
                              f"({type(exc).__name__}); delete it and rerun") from exc


def _differences(saved: dict[str, str], current: dict[str, str]) -> str:
    ignored = ("tracking.", "data.data_dir")
    keys = sorted(k for k in set(saved) | set(current)
                  if not k.startswith(ignored) and saved.get(k) != current.get(k))
    return ", ".join(f"{k}: {saved.get(k)} -> {current.get(k)}" for k in keys[:5]) or "unknown fields"


@dataclass(frozen=True)
class StoredCheckpoint:
    """One file in the checkpoint folder, as ``fedbench checkpoints list`` shows it."""

    run_id: str
    path: Path
    size_bytes: int
    modified: float  # POSIX time
    method: str
    round_idx: int | None  # None: unreadable, load() refuses it (``problem`` says why)
    problem: str | None = None  # the CheckpointError line load() would give; None: the file passes verify()


def stored() -> Iterator[StoredCheckpoint]:
    """Every checkpoint in :func:`checkpoint_dir`, newest first, each checked by :func:`verify`
    (reading its payload once): a file that :func:`load` would refuse has ``round_idx`` None and
    the refusal in ``problem``. A file removed meanwhile (its run just finished) is left out."""
    folder = checkpoint_dir()
    found = []
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else ():
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            found.append((info, path))
    found.sort(key=lambda pair: pair[0].st_mtime, reverse=True)
    for info, path in found:
        try:
            header = verify(path)
        except FileNotFoundError:
            continue
        except CheckpointError as exc:
            if not path.is_file():
                continue
            yield StoredCheckpoint(path.stem, path, info.st_size, info.st_mtime, "?", None, str(exc))
            continue
        yield StoredCheckpoint(path.stem, path, info.st_size, info.st_mtime, str(header.get("method", "?")),
                               header["round_idx"])


def remove(run_id: str) -> bool:
    """Delete ``run_id``'s checkpoint; False if there was none."""
    try:
        checkpoint_path(run_id).unlink()
    except FileNotFoundError:
        return False
    return True
