"""Checkpoint and resume: a killed run continues exactly as the uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from fedbench import engine
from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.core import checkpoint
from fedbench.errors import CheckpointError, ConfigError

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
    cmd = [sys.executable, "-m", "fedbench.cli.main", "run", *RUN_FLAGS, "--tracking-uri", tracking_uri]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    saved = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(checkpoints.glob("*.ckpt"))
        if found:
            saved = {"round_idx": checkpoint.read_header(found[0])[0]["round_idx"]}
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


def _finished_run(runner, tracking_uri, *extra):
    done = runner.invoke(app, ["run", *RUN_FLAGS[:-6], "--rounds", "1", "--local-epochs", "1",
                               "--tracking-uri", tracking_uri, "--experiment", "resume", *extra])
    assert done.exit_code == 0, done.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("resume")
    return client.search_runs([experiment.experiment_id])[0].info.run_id


def test_resuming_a_finished_or_unknown_run_is_refused(tracking_uri, checkpoints):
    runner = CliRunner()
    run_id = _finished_run(runner, tracking_uri)
    finished = runner.invoke(app, ["run", "--resume", run_id, "--tracking-uri", tracking_uri])
    assert finished.exit_code == 2 and "already FINISHED" in finished.output
    unknown = runner.invoke(app, ["run", "--resume", "0123abc", "--tracking-uri", tracking_uri])
    assert unknown.exit_code == 2 and "no MLflow run '0123abc'" in " ".join(unknown.output.split())


def test_a_finished_run_leaves_no_checkpoint_unless_asked(tracking_uri, checkpoints):
    runner = CliRunner()
    removed = _finished_run(runner, tracking_uri)
    assert not checkpoint.checkpoint_path(removed).exists()
    kept = _finished_run(runner, tracking_uri, "--keep-checkpoint")
    assert checkpoint.checkpoint_path(kept).is_file()
    listing = runner.invoke(app, ["checkpoints", "list", "--json"])
    assert listing.exit_code == 0 and f'"run_id": "{kept}"' in listing.output and '"method": "fedavg"' in listing.output
    pruned = runner.invoke(app, ["checkpoints", "prune", "--finished", "--tracking-uri", tracking_uri])
    assert pruned.exit_code == 0, pruned.output
    assert not checkpoint.checkpoint_path(kept).exists()


def test_a_truncated_checkpoint_is_refused_with_one_line(tmp_path):
    path = tmp_path / "run.ckpt"
    config = _config()
    checkpoint.save(path, checkpoint.Checkpoint(config.run_key, 0, {}, {}, [], config.flat_params()))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="damaged header"):
        checkpoint.load(path, config)
    path.write_bytes(b"PK\x03\x04 an old torch.save zip")
    with pytest.raises(CheckpointError, match="not a fedbench checkpoint"):
        checkpoint.load(path, config)


def _cut_padded_and_whole(folder):
    """Three checkpoints of round 2 with ~160 KB payloads: one cut to 70 KB, one padded, one intact."""
    config = _config()
    for name in ("cut", "padded", "whole"):
        state = {"w": torch.arange(40_000, dtype=torch.float32)}
        checkpoint.save(folder / f"{name}.ckpt", checkpoint.Checkpoint(config.run_key, 1, state, {}, [],
                                                                       config.flat_params()))
    (folder / "cut.ckpt").write_bytes((folder / "cut.ckpt").read_bytes()[:70_000])
    (folder / "padded.ckpt").write_bytes((folder / "padded.ckpt").read_bytes() + b"\0" * 16)
    return config


def test_a_truncated_or_padded_checkpoint_is_listed_unreadable_as_resume_refuses_it(checkpoints):
    config = _cut_padded_and_whole(checkpoints)
    rounds = {item.run_id: item.round_idx for item in checkpoint.stored()}
    assert rounds == {"cut": None, "padded": None, "whole": 1}
    with pytest.raises(CheckpointError, match=r"cut.ckpt is corrupt \(its payload is \d+ bytes, .*truncated or padded"):
        checkpoint.load(checkpoints / "cut.ckpt", config)
    with pytest.raises(CheckpointError, match=r"padded.ckpt is corrupt .*truncated or padded"):
        checkpoint.verify(checkpoints / "padded.ckpt")
    listing = CliRunner().invoke(app, ["checkpoints", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    by_run = {item["run_id"]: item for item in json.loads(listing.output)["checkpoints"]}
    assert by_run["cut"]["round"] is None and by_run["whole"]["round"] == 2
    assert "truncated or padded" in by_run["cut"]["unreadable"] and by_run["whole"]["unreadable"] is None


def test_prune_unreadable_removes_a_truncated_or_padded_checkpoint_and_keeps_an_intact_one(checkpoints):
    _cut_padded_and_whole(checkpoints)
    pruned = CliRunner().invoke(app, ["checkpoints", "prune", "--unreadable"])
    assert pruned.exit_code == 0, pruned.output
    assert "removed cut.ckpt (unreadable)" in pruned.output and "removed padded.ckpt (unreadable)" in pruned.output
    assert sorted(p.name for p in checkpoints.iterdir()) == ["whole.ckpt"]


def _saved_checkpoint(path, config):
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    checkpoint.save(path, engine.snapshot(method, 0, [{"round": 0, "train/loss": 1.0}]))
    return method


def test_a_bit_flipped_checkpoint_is_refused(tmp_path):
    path, config = tmp_path / "run.ckpt", _config()
    _saved_checkpoint(path, config)
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 4000, len(data)):  # inside the payload's tensor data
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails the checksum"):
        checkpoint.load(path, config)


class _Payload:
    """A pickle that runs a shell command when unpickled by a permissive loader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(path, config, marker):
    """A checkpoint that passes every header check (right run key, right checksum) and whose
    payload would execute ``touch marker`` if it were unpickled without ``weights_only``."""
    import hashlib
    import io

    buffer = io.BytesIO()
    torch.save({"method_state": _Payload(marker), "context_state": {}, "metric_rows": []}, buffer)
    data = buffer.getvalue()
    header = {"format": checkpoint.FORMAT_VERSION, "run_key": config.run_key, "round_idx": 0, "method": "fedavg",
              "payload_bytes": len(data), "payload_sha256": hashlib.sha256(data).hexdigest(),
              "config_params": config.flat_params()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(checkpoint.MAGIC + b" 2\n" + json.dumps(header).encode() + b"\n" + data)


def test_a_malicious_pickle_checkpoint_is_refused_without_running(tmp_path):
    path, config, marker = tmp_path / "run.ckpt", _config(), tmp_path / "pwned"
    _malicious(path, config, marker)
    with pytest.raises(CheckpointError, match="holds data fedbench did not write"):
        checkpoint.load(path, config)
    assert not marker.exists()


def test_resume_refuses_a_malicious_checkpoint_in_one_line(tmp_path, tracking_uri, checkpoints):
    from fedbench.tracking.tracker import MlflowTracker

    config = dataclasses.replace(_config(), tracking=dataclasses.replace(_config().tracking, uri=tracking_uri))
    tracker = MlflowTracker(tracking_uri, "resume")
    tracker.start(config, {})  # a RUNNING run, as if killed after round 1
    marker = tmp_path / "pwned"
    _malicious(checkpoint.checkpoint_path(tracker.run_id), config, marker)
    result = CliRunner().invoke(app, ["run", "--resume", tracker.run_id, "--tracking-uri", tracking_uri])
    assert result.exit_code == 2, result.output
    assert "holds data fedbench did not write" in " ".join(result.output.split())
    assert not marker.exists()


def test_a_resumed_state_round_trips_through_the_file(tmp_path):
    path, config = tmp_path / "run.ckpt", _config()
    method = _saved_checkpoint(path, config)
    fresh = engine.make_method(engine.prepare(config)[0])
    with torch.no_grad():
        for p in fresh.global_model.parameters():
            p.add_(1.0)
    engine.restore(fresh, checkpoint.load(path, config))
    for (name, a), b in zip(method.global_model.state_dict().items(), fresh.global_model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_another_config_names_the_difference(tmp_path):
    path = tmp_path / "run.ckpt"
    config = _config()
    checkpoint.save(path, checkpoint.Checkpoint(config.run_key, 0, {}, {}, [], config.flat_params()))
    other = dataclasses.replace(config, seed=7)
    with pytest.raises(ConfigError, match=r"another config \(seed: 42 -> 7\)"):
        checkpoint.load(path, other)


def test_checkpoints_are_replaced_atomically(tmp_path):
    path = tmp_path / "run.ckpt"
    config = _config()
    for round_idx in range(3):
        checkpoint.save(path, checkpoint.Checkpoint(config.run_key, round_idx, {}, {}, [], config.flat_params()))
    assert checkpoint.load(path, config).round_idx == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]
