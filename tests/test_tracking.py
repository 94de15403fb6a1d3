"""MLflow logging: params, per-round metrics, artifacts, and the status of failed runs."""

from __future__ import annotations

import dataclasses

import pytest

from fedbench import engine
from fedbench.core.method import Method
from fedbench.errors import TrackingError
from fedbench.tracking.helper_process import ProcessTracker
from fedbench.tracking.tracker import MlflowTracker, metrics_csv


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{path / 'mlflow.db'}"


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store)


def test_a_run_logs_config_curves_and_artifacts(store, tiny_config):
    tracker = MlflowTracker(store, experiment="logged")
    engine.run(tiny_config, tracker=tracker)
    client = _client(store)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.dataset"] == "synthetic"
    assert run.data.params["train.batch_size"] == "32"
    # switches whose default depends on the device are logged as the run took them
    assert (run.data.params["cuda_graphs"], run.data.params["channels_last"]) == ("False", "False")
    assert run.data.params["partition.size_min"]
    assert run.data.tags["fedbench.run_key"] == tiny_config.run_key
    history = client.get_metric_history(tracker.run_id, "eval/accuracy")
    assert [m.step for m in history] == list(range(tiny_config.rounds))
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"config.yaml", "metrics.csv", "partition"} <= artifacts
    config_text = open(client.download_artifacts(tracker.run_id, "config.yaml")).read()
    assert "dataset: synthetic" in config_text
    table = open(client.download_artifacts(tracker.run_id, "metrics.csv")).read().splitlines()
    assert table[0].startswith("round,") and len(table) == 1 + tiny_config.rounds


class _CrashInSecondRound(Method):
    def aggregate(self, round_idx, updates):
        if round_idx == 1:
            raise RuntimeError("simulated crash")
        super().aggregate(round_idx, updates)


class _InterruptInSecondRound(Method):
    def aggregate(self, round_idx, updates):
        if round_idx == 1:
            raise KeyboardInterrupt
        super().aggregate(round_idx, updates)


@pytest.mark.parametrize(
    ("method_cls", "error", "status"),
    [(_CrashInSecondRound, RuntimeError, "FAILED"), (_InterruptInSecondRound, KeyboardInterrupt, "KILLED")],
)
def test_a_broken_run_keeps_its_finished_rounds_and_status(store, tiny_config, monkeypatch, method_cls, error, status):
    monkeypatch.setattr(engine, "make_method", lambda ctx: method_cls(ctx))
    tracker = MlflowTracker(store, experiment="broken")
    config = dataclasses.replace(tiny_config, rounds=3)
    with pytest.raises(error):
        engine.run(config, tracker=tracker)
    client = _client(store)
    run = client.get_run(tracker.run_id)
    assert run.info.status == status
    assert [m.step for m in client.get_metric_history(tracker.run_id, "eval/accuracy")] == [0]
    assert "metrics.csv" in {a.path for a in client.list_artifacts(tracker.run_id)}


def test_metrics_csv_has_one_row_per_round_and_blank_missing_cells():
    text = metrics_csv([{"round": 0, "a": 1.0}, {"round": 1, "a": 2.0, "b": 3.0}])
    assert text.splitlines() == ["round,a,b", "0,1.0,", "1,2.0,3.0"]


def test_runs_opening_one_fresh_sqlite_store_at_once_all_connect_to_one_experiment(tmp_path):
    """Concurrent first connections race MLflow's schema migration without the store lock."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    script = (
        "from fedbench.tracking.tracker import MlflowTracker\n"
        f"client, experiment_id = MlflowTracker({uri!r}, 'shared')._connect(create=True)\n"
        "print(experiment_id)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [code for code, _, _ in outcomes] == [0, 0], [err[-300:] for _, _, err in outcomes]
    assert len({out.strip() for _, out, _ in outcomes}) == 1  # one experiment, not one per process
    assert (tmp_path / "fresh.db.lock").exists()


def test_only_local_sqlite_stores_are_locked(tmp_path, monkeypatch):
    from fedbench.tracking.tracker import sqlite_store_path

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sqlite_store_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_store_path(None).name == "mlflow.db"  # MLflow's default store
    assert sqlite_store_path("http://mlflow.example:5000") is None


# ------------------------------------------------------- the logging helper process
def test_the_helper_process_logs_what_the_in_process_tracker_logs(store, tiny_config):
    tracker = ProcessTracker(store, experiment="helper")
    engine.run(tiny_config, tracker=tracker)
    client = _client(store)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.dataset"] == "synthetic" and run.data.params["partition.size_min"]
    assert run.data.tags["fedbench.run_key"] == tiny_config.run_key
    assert [m.step for m in client.get_metric_history(tracker.run_id, "eval/accuracy")] == list(
        range(tiny_config.rounds))
    assert {"config.yaml", "metrics.csv", "partition"} <= {a.path for a in client.list_artifacts(tracker.run_id)}
    assert tracker._process.returncode == 0  # finished and exited


def test_the_helper_sends_what_needs_the_method_so_the_helper_never_imports_torch(store, tiny_config, monkeypatch):
    """The run key and the options with defaults need the method's class (hence torch): the main
    process has it loaded, while importing it in the helper would take two cores' worth of CPU
    from round 1 on a small machine."""
    import subprocess
    import sys

    sent = []
    monkeypatch.setattr(ProcessTracker, "_send", lambda self, name, *args: sent.append((name, args)))
    monkeypatch.setattr(ProcessTracker, "_receive", lambda self, block=True: None)
    ProcessTracker.start(ProcessTracker.__new__(ProcessTracker), tiny_config, {})
    (name, (_, _, option_values, run_key, method_tags)), = sent
    assert name == "start" and run_key == tiny_config.run_key and option_values == tiny_config.option_params()
    assert method_tags == tiny_config.method_tags() == {"fedbench.ignores_memory": "true"}  # tiny_config: FedAvg

    script = (
        "import sys\n"
        "from fedbench.config import make_config\n"
        "from fedbench.tracking.tracker import MlflowTracker\n"
        "config = make_config(overrides={'method': 'neulite', 'data': {'dataset': 'synthetic'}})\n"
        f"tracker = MlflowTracker({store!r}, 'no-torch')\n"
        "tracker.start(config, {}, option_values={'options.sigma': '0.5'}, run_key='k', method_tags={})\n"
        "tracker.log_round(0, {'eval/accuracy': 0.5})\n"
        "tracker.finish('FINISHED')\n"
        "print(sorted(m for m in ('torch', 'fedbench.api', 'fedbench.engine') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "[]"


def test_the_helper_marks_an_interrupted_run_killed_and_keeps_its_rounds(store, tiny_config, monkeypatch):
    monkeypatch.setattr(engine, "make_method", lambda ctx: _InterruptInSecondRound(ctx))
    tracker = ProcessTracker(store, experiment="helper-killed")
    with pytest.raises(KeyboardInterrupt):
        engine.run(dataclasses.replace(tiny_config, rounds=3), tracker=tracker)
    client = _client(store)
    assert client.get_run(tracker.run_id).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "eval/accuracy")] == [0]


def test_an_unreachable_store_fails_start_with_one_line_and_the_helper_exits(tiny_config):
    tracker = ProcessTracker("http://127.0.0.1:9", experiment="nowhere")
    with pytest.raises(TrackingError, match=r"cannot reach the MLflow tracking store at http://127.0.0.1:9") as info:
        tracker.start(tiny_config, {})  # does not wait for the store: the error comes with the run id at the latest
        tracker.log_round(0, {"eval/accuracy": 0.5})
    assert "\n" not in str(info.value)
    tracker.close()
    tracker.close()  # idempotent
    assert tracker._process.returncode == 0


def test_a_helper_that_dies_is_a_tracking_error_not_a_hang(store, tiny_config):
    tracker = ProcessTracker(store, experiment="helper-dies")
    tracker._process.kill()
    tracker._process.wait()
    with pytest.raises(TrackingError, match="MLflow logging process exited"):
        tracker.start(tiny_config, {})


def test_a_store_the_helper_cannot_open_fails_the_run_by_round_one_with_one_line(tmp_path, tiny_config, monkeypatch):
    """Round 1 trains while the helper opens the store; a store it cannot open fails the run when
    round 1 would be logged at the latest (before it, if the error has arrived), no round recorded."""
    corrupt = tmp_path / "mlflow.db"
    corrupt.write_bytes(b"this is not an SQLite database" * 100)
    tracker = ProcessTracker(f"sqlite:///{corrupt}", experiment="corrupt")
    logged: list[int] = []
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking store") as info:
        engine.run(tiny_config, tracker=tracker, on_round=lambda r: logged.append(r.round_idx))
    assert "\n" not in str(info.value) and logged == [] and tracker.run_id is None
    tracker.close()


def test_the_run_id_waits_for_a_run_still_being_created(store, tiny_config):
    tracker = ProcessTracker(store, experiment="deferred")
    tracker.start(tiny_config, {})
    run_id = tracker.run_id
    assert run_id and _client(store).get_run(run_id).info.status == "RUNNING"
    tracker.finish("FINISHED")
    assert _client(store).get_run(run_id).info.status == "FINISHED"


# ------------------------------------------------- new local stores: created by MLflow, under the lock
def test_a_new_local_store_is_created_by_mlflow_and_works(tmp_path):
    path = tmp_path / "new" / "mlflow.db"
    tracker = MlflowTracker(f"sqlite:///{path}", experiment="created")
    tracker.connect()  # opens the store; the experiment comes with the first run
    assert tracker.find_experiment()[1] is None
    client, experiment_id = tracker._connect(create=True)
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "eval/accuracy", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"eval/accuracy": 0.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]


def test_a_resumed_run_that_finishes_keeps_no_stale_error_tag(store, tiny_config):
    first = MlflowTracker(store, experiment="stale-tag")
    first.start(tiny_config, {}, option_values={})
    first.finish("KILLED", "interrupted by the user")
    assert _client(store).get_run(first.run_id).data.tags["fedbench.error"] == "interrupted by the user"
    again = MlflowTracker(store, experiment="stale-tag")
    again.resume(first.run_id, [])
    again.finish("FINISHED")
    run = _client(store).get_run(first.run_id)
    assert run.info.status == "FINISHED" and "fedbench.error" not in run.data.tags


def test_an_unwritable_artifact_folder_fails_before_the_run_is_created(store, tiny_config, tmp_path):
    from fedbench.errors import ConfigError

    (tmp_path / "file.txt").write_text("a file where a folder belongs")
    client = _client(store)
    experiment_id = client.create_experiment("no-artifacts", artifact_location=str(tmp_path / "file.txt" / "art"))
    tracker = MlflowTracker(store, experiment="no-artifacts")
    with pytest.raises(ConfigError, match="MLflow artifact folder of experiment 'no-artifacts' .* is not writable"):
        tracker.start(tiny_config, {}, option_values={})
    assert tracker.run_id is None and list(client.search_runs([experiment_id])) == []


def test_a_store_failing_mid_run_is_one_line_naming_the_round(store, tiny_config, monkeypatch):
    tracker = MlflowTracker(store, experiment="mid-run")
    tracker.start(tiny_config, {}, option_values={})

    def refuse(*_args, **_kwargs):
        raise RuntimeError("(sqlite3.OperationalError) attempt to write a readonly database\n[SQL: INSERT ...]")

    monkeypatch.setattr(tracker._client, "log_batch", refuse)
    with pytest.raises(TrackingError) as info:
        tracker.log_round(0, {"eval/accuracy": 0.5})
    message = str(info.value)
    assert "failed while logging round 1 of run" in message and "readonly database)" in message
    assert "\n" not in message and "[SQL" not in message


def test_a_run_records_the_code_that_made_it_and_a_resume_by_other_code_records_both(store, tiny_config, monkeypatch,
                                                                                    caplog):
    from fedbench.tracking import provenance

    first = MlflowTracker(store, experiment="code-version")
    first.start(tiny_config, {}, option_values={})
    first.finish("KILLED", "interrupted by the user")
    tags = _client(store).get_run(first.run_id).data.tags
    started = tags[provenance.TAG]
    assert started == provenance.code_version() and tags[provenance.COMMIT_TAG] == provenance.commit()
    monkeypatch.setattr(provenance, "code_version", lambda: "f" * 40)
    again = MlflowTracker(store, experiment="code-version")
    again.resume(first.run_id, [])
    again.finish("FINISHED")
    assert _client(store).get_run(first.run_id).data.tags[provenance.TAG] == f"{started} then {'f' * 40}"
    assert f"continues with {'f' * 12}" in caplog.text
