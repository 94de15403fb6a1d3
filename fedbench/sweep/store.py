"""What the tracking store already holds for a grid: the cells that finished (and by which code),
and the cut-short runs a sweep continues from their checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fedbench.core import checkpoint
from fedbench.tracking import provenance
from fedbench.tracking.tracker import MlflowTracker

UNFINISHED = ("RUNNING", "KILLED", "FAILED")


def finished_keys(experiment: str, tracking_uri: str | None) -> dict[str, str | None]:
    """Run key -> the code version (:mod:`fedbench.tracking.provenance`) of the newest FINISHED
    run of ``experiment`` with that key (None where the run did not record one)."""
    keys: dict[str, str | None] = {}
    for key, run in _newest_first(experiment, tracking_uri, "attributes.status = 'FINISHED'"):
        if key not in keys:
            keys[key] = provenance.recorded_version(run.data.tags)
    return keys


def skip_reason(version: str | None) -> str:
    """Why a finished cell is skipped, naming the code that finished it where that is not this
    checkout's: the run key hashes the config, not the code, so ``--rerun`` is the way to measure
    a cell again after the code changed."""
    now = provenance.code_version()
    if version == now:
        return "already finished"
    made_by = "code that did not record its version" if version is None else f"code {provenance.short(version)}"
    return f"already finished, by {made_by} (this is {provenance.short(now)}; --rerun runs it here)"


def resumable_runs(experiment: str, tracking_uri: str | None) -> dict[str, str]:
    """Run key -> id of the newest cut-short run (RUNNING, KILLED, FAILED) of ``experiment``
    that left a checkpoint here, so a sweep rerun continues it instead of starting over."""
    found: dict[str, str] = {}
    for key, run in _newest_first(experiment, tracking_uri, "attributes.status != 'FINISHED'"):
        if run.info.status in UNFINISHED and key not in found and checkpoint.checkpoint_path(run.info.run_id).is_file():
            found[key] = run.info.run_id
    return found


def _newest_first(experiment: str, tracking_uri: str | None, filter_string: str) -> Iterator[tuple[str, Any]]:
    """(run key, MLflow run) of the runs of ``experiment`` that match ``filter_string`` and carry
    a run key, newest first, page by page."""
    client, experiment_id = MlflowTracker(tracking_uri, experiment).find_experiment()
    if experiment_id is None:  # no run has started in it: nothing to skip or continue
        return
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get("fedbench.run_key", "")
            if key:
                yield key, run
        token = page.token
        if not token:
            return
