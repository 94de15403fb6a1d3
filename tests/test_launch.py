"""The `fedbench` entry point starts MLflow's logging helper before the command line is parsed,
and the run adopts it — or stops it when the run turns out untracked."""

from __future__ import annotations

import sys

import pytest

from fedbench import launch, tracking_process
from tests.test_cli import TINY

TRACKED = [a for a in TINY if a != "--no-tracking"]


@pytest.mark.parametrize(
    ("args", "early"),
    [
        (["run"], True),
        (["run", "--method", "neulite", "--dataset", "cinic10"], True),
        (["run", "--no-tracking"], False),
        (["run", "--help"], False),
        (["run", "--resume=0123abcd"], False),
        (["memory", "--model", "resnet18"], False),
        (["sweep", "run"], False),
        ([], False),
    ],
)
def test_only_a_tracked_run_starts_the_helper_early(args, early):
    assert launch.wants_helper(args) is early


@pytest.mark.parametrize(
    ("args", "torch_first"),
    [
        (["run"], True),
        (["run", "--no-tracking", "--rounds", "2"], True),
        (["memory", "--model", "all"], True),
        (["memory", "--help"], False),
        (["run", "-h"], False),
        (["list", "methods"], False),
        (["--help"], False),
        ([], False),
    ],
)
def test_commands_that_need_torch_import_it_first(args, torch_first):
    assert launch.needs_torch(args) is torch_first


def test_torch_is_imported_with_the_collector_held_off_then_frozen():
    import gc
    import subprocess

    code = ("import gc, sys\n"
            "from fedbench import launch\n"
            "seen = []\n"
            "gc.callbacks.append(lambda phase, info: seen.append(info['generation']))\n"
            "launch.import_torch()\n"
            "assert 'torch' in sys.modules and gc.isenabled(), 'torch imported, collector back on'\n"
            "assert gc.get_freeze_count() > 50_000, 'what torch made is frozen'\n"
            "print(max(seen, default=-1))\n")
    collections = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(collections.stdout) < 2  # no full collection (torch's own code asks for a young one)
    assert gc.isenabled()


@pytest.fixture
def spawned(monkeypatch):
    """Every helper process started, in order."""
    found = []
    spawn = tracking_process._spawn_helper

    def counted():
        found.append(spawn())
        return found[-1]

    monkeypatch.setattr(tracking_process, "_spawn_helper", counted)
    yield found
    tracking_process.stop_early_helper()


def _fedbench(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["fedbench", *args])
    with pytest.raises(SystemExit) as done:
        launch.main()
    assert done.value.code in (0, None)


def test_a_tracked_run_adopts_the_helper_started_before_parsing(tmp_path, monkeypatch, spawned):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _fedbench(monkeypatch, "run", *TRACKED, "--tracking-uri", uri, "--experiment", "early")
    assert len(spawned) == 1 and tracking_process._early_helper is None  # one helper, the early one
    assert spawned[0].process.returncode == 0  # it logged the run and exited on its own
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("early").experiment_id])
    assert run.info.status == "FINISHED"


def test_a_run_whose_config_turns_tracking_off_stops_the_early_helper(tmp_path, monkeypatch, spawned):
    monkeypatch.chdir(tmp_path)  # where the default store would appear
    config = tmp_path / "untracked.yaml"
    config.write_text("tracking:\n  enabled: false\n")
    _fedbench(monkeypatch, "run", "--config", str(config), *TRACKED)
    assert len(spawned) == 1 and tracking_process._early_helper is None
    assert spawned[0].process.returncode is not None  # stopped on the way out, not left running
    assert not (tmp_path / "mlflow.db").exists()
