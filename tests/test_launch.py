"""The `fedbench` console script runs the command line; a tracked run logs through one MLflow
helper process, started by its tracker, which exits when the run is done."""

from __future__ import annotations

import sys

import pytest

from fedbench.cli.main import main
from fedbench.tracking import helper_process as tracking_process
from tests.test_cli import TINY

TRACKED = [a for a in TINY if a != "--no-tracking"]


def test_the_console_script_is_the_command_line_s_entry_point():
    from importlib.metadata import entry_points

    import fedbench.cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "fedbench"]
    assert script.value == "fedbench.cli:launch" and script.load() is fedbench.cli.launch


def test_a_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    import builtins

    import fedbench.cli

    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "fedbench.cli.main":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as done:
        fedbench.cli.launch()
    assert done.value.code == 130
    assert capsys.readouterr().err == "interrupted before a run was created; nothing was logged\n"


@pytest.fixture
def spawned(monkeypatch):
    """Every helper process started, in order."""
    found = []
    spawn = tracking_process._spawn_helper

    def counted():
        found.append(spawn())
        return found[-1]

    monkeypatch.setattr(tracking_process, "_spawn_helper", counted)
    return found


def _fedbench(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["fedbench", *args])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)


def test_a_tracked_run_logs_through_one_helper_that_exits_after_the_run(tmp_path, monkeypatch, spawned):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _fedbench(monkeypatch, "run", *TRACKED, "--tracking-uri", uri, "--experiment", "launched")
    assert len(spawned) == 1
    assert spawned[0].process.returncode == 0  # it logged the run and exited on its own
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("launched").experiment_id])
    assert run.info.status == "FINISHED"


def test_a_run_whose_config_turns_tracking_off_starts_no_helper(tmp_path, monkeypatch, spawned):
    monkeypatch.chdir(tmp_path)  # where the default store would appear
    config = tmp_path / "untracked.yaml"
    config.write_text("tracking:\n  enabled: false\n")
    _fedbench(monkeypatch, "run", "--config", str(config), *TRACKED)
    assert spawned == []
    assert not (tmp_path / "mlflow.db").exists()


def test_python_dash_m_fedbench_cli_is_the_fedbench_command():
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = subprocess.run([sys.executable, "-m", "fedbench.cli", "list", "methods"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "neulite" in result.stdout
