"""Folders a run writes to, checked before anything runs."""

from __future__ import annotations

from pathlib import Path

from fedbench.errors import ConfigError


def check_writable(folder: str | Path, what: str, fix: str) -> None:
    """Fail now, with one line, if files cannot be created in ``folder`` (made if missing).

    Checkpoints and MLflow artifacts are first written after round 1 or after the run is
    created; checking before anything runs turns a traceback (and a run left RUNNING) into one
    line. ``what`` names the folder in the message (``checkpoint folder``), ``fix`` says what
    to do about it.
    """
    import tempfile

    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fedbench-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{what} {path} is not writable ({reason}); {fix}") from exc
