"""Finding a data set's folder by the files it must hold, with errors that name what is missing.

Every file-based data set describes its on-disk layout once (:class:`Layout`)
and is found by :func:`find`: the skeleton's search order (``--data-dir``,
``$FEDBENCH_DATA``, the user cache, system folders), then an optional download.
A folder that holds *part* of a layout is a user's broken copy, not a
different place to keep looking: it is reported at once, naming the missing
file or folder, instead of a download silently replacing it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedbench.data import candidate_dirs, locate, not_found
from fedbench.errors import DataNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """A data set's on-disk shape: alternative sets of paths, any one of which makes a complete copy.

    ``variants`` maps a human-readable name of a layout (``"pickle batches"``)
    to the relative paths it needs. ``subdir`` is the folder name looked for
    under each search root.
    """

    name: str
    subdir: str
    variants: dict[str, Sequence[str]]
    how_to_get: str
    system_dirs: Sequence[str] = ()

    def complete_variant(self, folder: Path) -> str | None:
        """The first layout variant that ``folder`` holds completely, else ``None``."""
        for variant, paths in self.variants.items():
            if all((folder / p).exists() for p in paths):
                return variant
        return None

    def missing(self, folder: Path) -> tuple[str, list[str]] | None:
        """For a folder holding part (not none) of a variant: that variant and what it lacks."""
        best: tuple[str, list[str]] | None = None
        for variant, paths in self.variants.items():
            absent = [p for p in paths if not (folder / p).exists()]
            if 0 < len(absent) < len(paths) and (best is None or len(absent) < len(best[1])):
                best = (variant, absent)
        return best


def _searched(layout: Layout, data_dir: str | None) -> list[Path]:
    """The folders :func:`fedbench.data.locate` looks in: ``--data-dir`` alone when given."""
    if data_dir:
        root = Path(data_dir).expanduser()
        return [root, root / layout.subdir]
    return candidate_dirs(None, layout.subdir, layout.system_dirs)


def _raise_if_partial(layout: Layout, folders: list[Path]) -> None:
    for folder in folders:
        partial = layout.missing(folder) if folder.is_dir() else None
        if partial is not None:
            variant, absent = partial
            expected = ", ".join(layout.variants[variant])
            raise DataNotFoundError(
                f"{layout.name} in {folder} is incomplete: missing {', '.join(absent)} "
                f"(the {variant} layout expects {expected}); restore those files or {layout.how_to_get}"
            )


def find(layout: Layout, data_dir: str | None, download: Callable[[], Path | None] | None = None) -> Path:
    """The folder holding a complete copy of ``layout``; a one-line error when there is none."""
    try:
        folder = locate(
            data_dir,
            layout.subdir,
            lambda f: layout.complete_variant(f) is not None,
            system_dirs=layout.system_dirs,
            how_to_get=layout.how_to_get,
        )
    except DataNotFoundError:
        _raise_if_partial(layout, _searched(layout, data_dir))  # the more precise message, where there is one
        raise
    if folder is not None:
        return folder
    _raise_if_partial(layout, _searched(layout, data_dir))
    if download is not None:
        downloaded = download()
        if downloaded is not None and layout.complete_variant(downloaded) is not None:
            log.info("%s downloaded to %s", layout.name, downloaded)
            return downloaded
    raise not_found(layout.name, data_dir, layout.subdir, layout.system_dirs, layout.how_to_get)


def download_file(url: str, destination: Path, *, md5: str | None = None, chunk_bytes: int = 1 << 20) -> Path | None:
    """Fetch ``url`` to ``destination`` atomically (``<name>.part``, then rename), or return
    None after logging why (offline, HTTP error, disk full, wrong checksum), so the caller's
    not-found error, which says how to get the data by hand, is what the user sees. A download
    cut short leaves no file that a later search would take for a complete copy.

    With ``md5``, a file whose checksum differs (an HTML page a moved link answers with
    HTTP 200, an empty or cut-off body) is deleted rather than cached: once cached, later runs
    would read it instead of downloading again."""
    import hashlib
    import urllib.request

    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    log.warning("downloading %s to %s (once; later runs read the cached copy)", url, destination)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(chunk_bytes):
                digest.update(chunk)
                out.write(chunk)
        if md5 is not None and digest.hexdigest() != md5:
            partial.unlink(missing_ok=True)
            log.warning("download of %s is not the expected file (md5 %s, expected %s); discarded",
                        url, digest.hexdigest(), md5)
            return None
        partial.replace(destination)
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        partial.unlink(missing_ok=True)
        log.warning("download of %s failed: %s", url, exc)
        return None
    return destination
