"""Which code made a run: the commit of the fedbench checkout, and whether its code had changes.

A run key hashes the config, not the code, so a store can hold cells made by different code:
a sweep skips a cell that finished before a method changed, and a table may then average runs
that measured different things. Every run records its code version (the tag
``fedbench.code_version``) so sweeps and reports can say when that happens.

A version is the checkout's commit (``git rev-parse HEAD``), with ``+uncommitted.<digest of the
code>`` where the code (:data:`CODE_PATHS`) differs from it: a changed file, or a new one git does not ignore (a
method file not yet added), so the commit alone does not say what ran. Outside a git checkout
(an installed wheel, a copied tree) it is the package version and a digest of the code's Python
files (``fedbench 0.1.0+code.<12 hex digits>``), the same for the same code in either layout.
``$FEDBENCH_CODE_VERSION`` overrides both (name the commit a copied tree came from).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

from fedbench import __version__

TAG = "fedbench.code_version"
ENV = "FEDBENCH_CODE_VERSION"  # names the code where git cannot (a copied tree)
COMMIT_TAG = "fedbench.git_sha"  # the checkout's commit alone ("unknown" outside one); older runs have only it
UNCOMMITTED = "+uncommitted"
FULL_COMMIT = re.compile(r"\b[0-9a-f]{40}\b")
# The installed packages whose Python files are the code, and their folders in a checkout
# (pyproject's package-dir); a wheel has the last three inside fedbench/.
CHECKOUT_FOLDERS = {"fedbench": "fedbench", "fedbench.methods": "methods", "fedbench.datasets": "datasets",
                    "fedbench.reports": "reports"}
# Where a change alters what a run computes: the packages and their build (entry points).
CODE_PATHS = (*CHECKOUT_FOLDERS.values(), "pyproject.toml")
# The checkout this module belongs to: fedbench/tracking/provenance.py -> the repository root.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def code_version() -> str:
    """The version of the code running here: ``$FEDBENCH_CODE_VERSION`` if set, else that of
    this checkout (:func:`checkout_version`)."""
    return os.environ.get(ENV) or checkout_version(SOURCE_ROOT)


@cache
def checkout_version(root: Path) -> str:
    """The version of the code at ``root``: ``<commit>``, ``<commit>+uncommitted.<digest>``, or
    ``fedbench <version>+code.<digest>`` (:func:`code_digest` of the imported packages) where
    ``root`` is not the top of a git checkout (an installed package inside some other
    repository is not that repository's commit)."""
    head = commit(root)
    if head == "unknown":
        return f"fedbench {__version__}+code.{code_digest(package_folders())[:12]}"
    if not _git(root, "status", "--porcelain", "--", *CODE_PATHS):
        return head
    folders = {package: [root / folder] for package, folder in CHECKOUT_FOLDERS.items()}
    return f"{head}{UNCOMMITTED}.{code_digest(folders)[:12]}"  # two states of the changes differ


@cache
def commit(root: Path = SOURCE_ROOT) -> str:
    """The commit of the checkout at ``root`` (``git rev-parse HEAD``), ``unknown`` outside one."""
    top = _git(root, "rev-parse", "--show-toplevel")
    head = _git(root, "rev-parse", "HEAD")
    return head if head and top and Path(top).resolve() == root.resolve() else "unknown"


def package_folders() -> dict[str, list[Path]]:
    """Where the import system finds each package of the code (an editable install maps the
    checkout's folders, a wheel its site-packages ones)."""
    folders = {}
    for package in CHECKOUT_FOLDERS:
        spec = importlib.util.find_spec(package)
        folders[package] = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return folders


def code_digest(folders: Mapping[str, Iterable[Path]]) -> str:
    """SHA-256 over the Python files of each package (name -> its folders), each file named by
    its path in the installed layout (``fedbench/methods/fedavg.py``), so a checkout and a wheel
    of the same code agree; bytecode caches are not code."""
    files: dict[str, Path] = {}
    for package, locations in folders.items():
        prefix = package.replace(".", "/")
        for location in locations:
            for path in location.rglob("*.py"):
                if "__pycache__" not in path.parts:
                    files[f"{prefix}/{path.relative_to(location).as_posix()}"] = path
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes() + b"\0")
    return digest.hexdigest()


def _git(root: Path, *args: str) -> str | None:
    """The stripped output of a git command in ``root``; None where git fails or is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def short(version: str) -> str:
    """A version for messages: each commit in it cut to 12 hex digits, the rest kept."""
    return FULL_COMMIT.sub(lambda match: match.group()[:12], version)


def recorded_version(tags: dict[str, str]) -> str | None:
    """The code version a run's tags record: its ``fedbench.code_version``, else (older runs)
    its commit; None where neither was recorded."""
    version = tags.get(TAG) or tags.get(COMMIT_TAG)
    return None if not version or version == "unknown" else version


def resumed_version(started: str | None, now: str) -> str:
    """The version of a run started by ``started`` code and continued by ``now``: one version
    where they agree, else both (``A then B``), so a table counts the run as made by neither."""
    if started is None or started == now or started.endswith(f" then {now}"):
        return now if started is None else started
    return f"{started} then {now}"


def describe_versions(versions: Iterable[str | None], what: str) -> list[str]:
    """Warnings for ``what`` (e.g. "the runs of this table") made by more than one code version,
    or by code with uncommitted changes (whose commit does not say what ran)."""
    counts: dict[str, int] = {}
    for version in versions:
        key = version if isinstance(version, str) and version else "unrecorded"  # pandas gives NaN too
        counts[key] = counts.get(key, 0) + 1
    warnings = []
    if len(counts) > 1:
        listed = ", ".join(f"{short(v)} ({n})" for v, n in sorted(counts.items(), key=lambda item: -item[1]))
        warnings.append(
            f"{what} come from {len(counts)} code versions: {listed}; runs made by different code may "
            "differ in what they measure: re-run the older ones at one version (fedbench sweep GRID --rerun, "
            "or into a new --experiment)"
        )
    uncommitted = sum(n for v, n in counts.items() if UNCOMMITTED in v)
    if uncommitted:
        warnings.append(f"{uncommitted} of {what} were made from a checkout with uncommitted code changes, "
                        "so their commit does not say what ran")
    return warnings
