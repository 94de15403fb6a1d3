"""Checkpoint and resume: a killed run continues exactly as the uninterrupted one."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from fedbench import checkpoint, engine
from fedbench.cli import app
from fedbench.config import make_config
from fedbench.errors import ConfigError

ROUNDS = 6
RUN_FLAGS = ["--method", "fedavg", "--dataset", "synthetic", "--clients", "6", "--clients-per-round", "3",
             "--partition", "iid", "--local-epochs", "30", "--width", "0.25", "--rounds", str(ROUNDS),
             "--experiment", "resume"]


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(folder))
    return folder


def _config():
    return make_config(overrides={
        "method": "fedavg", "data": {"dataset": "synthetic", "num_clients": 6, "partition": "iid"},
        "train": {"local_epochs": 30}, "model": {"width": 0.25}, "clients_per_round": 3, "rounds": ROUNDS,
        "tracking": {"experiment": "resume"},
    })


def _history(uri, run_id, key="eval/accuracy"):
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_run_killed_mid_round_resumes_to_the_same_metrics(tmp_path, tracking_uri, checkpoints):
    env = {**os.environ, "FEDBENCH_CHECKPOINTS": str(checkpoints)}
    cmd = [sys.executable, "-m", "fedbench.cli", "run", *RUN_FLAGS, "--tracking-uri", tracking_uri]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    saved = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(checkpoints.glob("*.pt"))
        if found:
            saved = torch.load(found[0], weights_only=False)
            if saved["round_idx"] >= 1:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert saved is not None and saved["round_idx"] < ROUNDS - 1, "the run finished before it could be killed"
    run_id = found[0].stem

    result = CliRunner().invoke(app, ["run", "--resume", run_id, "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output

    uninterrupted = engine.run(dataclasses.replace(_config(), tracking=dataclasses.replace(_config().tracking, enabled=False)))
    expected = list(enumerate(uninterrupted.metric("eval/accuracy")))
    assert _history(tracking_uri, run_id) == expected
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"


def test_resuming_a_finished_or_unknown_run_is_refused(tracking_uri, checkpoints):
    runner = CliRunner()
    done = runner.invoke(app, ["run", *RUN_FLAGS[:-6], "--rounds", "1", "--local-epochs", "1",
                               "--tracking-uri", tracking_uri, "--experiment", "resume"])
    assert done.exit_code == 0, done.output
    run_id = next(checkpoints.glob("*.pt")).stem
    finished = runner.invoke(app, ["run", "--resume", run_id, "--tracking-uri", tracking_uri])
    assert finished.exit_code == 2 and "already FINISHED" in finished.output
    unknown = runner.invoke(app, ["run", "--resume", "0123abc", "--tracking-uri", tracking_uri])
    assert unknown.exit_code == 2 and "no MLflow run '0123abc'" in " ".join(unknown.output.split())


def test_a_truncated_checkpoint_is_refused_with_one_line(tmp_path):
    path = tmp_path / "run.pt"
    config = _config()
    checkpoint.save(path, checkpoint.Checkpoint(config.run_key, 0, {}, {}, [], config.flat_params()))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ConfigError, match="unreadable"):
        checkpoint.load(path, config)


def test_a_checkpoint_of_another_config_names_the_difference(tmp_path):
    path = tmp_path / "run.pt"
    config = _config()
    checkpoint.save(path, checkpoint.Checkpoint(config.run_key, 0, {}, {}, [], config.flat_params()))
    other = dataclasses.replace(config, seed=7)
    with pytest.raises(ConfigError, match=r"another config \(seed: 42 -> 7\)"):
        checkpoint.load(path, other)


def test_checkpoints_are_replaced_atomically(tmp_path):
    path = tmp_path / "run.pt"
    config = _config()
    for round_idx in range(3):
        checkpoint.save(path, checkpoint.Checkpoint(config.run_key, round_idx, {}, {}, [], config.flat_params()))
    assert checkpoint.load(path, config).round_idx == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
