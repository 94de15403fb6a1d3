"""Sweeps: grid expansion, validation before anything runs, skipping finished cells, isolating failures."""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
from concurrent.futures import Future
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedbench import sweep
from fedbench.cli.main import app
from fedbench.errors import ConfigError
from fedbench.sweep import runner as sweep_runner

runner = CliRunner()

GRID = """
experiment: tiny-grid
base:
  method: fedavg
  rounds: 1
  clients_per_round: 2
  data: {dataset: synthetic, num_clients: 4, partition: iid}
  model: {width: 0.25}
  train: {local_epochs: 1}
axes:
  seed: [1, 2]
  data.partition: [iid, natural]  # natural fails at run time: synthetic has no writers
"""


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(GRID))
    return path


def test_a_grid_expands_to_the_cartesian_product_with_distinct_keys(grid_file):
    grid = sweep.load_grid(grid_file)
    assert grid.experiment == "tiny-grid"
    assert [c.values for c in grid.cells] == [
        {"seed": 1, "data.partition": "iid"}, {"seed": 1, "data.partition": "natural"},
        {"seed": 2, "data.partition": "iid"}, {"seed": 2, "data.partition": "natural"},
    ]
    assert len({c.config.run_key for c in grid.cells}) == 4
    assert all(c.config.tracking.experiment == "tiny-grid" for c in grid.cells)


def test_cases_set_keys_together_and_multiply_with_the_axes(tmp_path):
    """Fig. 5(a): NeuLite at several fleet sizes, 10 % of them per round, and FedAvg at one."""
    path = tmp_path / "cases.yaml"
    path.write_text(textwrap.dedent("""
        base: {rounds: 1, data: {dataset: synthetic, partition: iid}}
        cases:
          - {method: neulite, data.num_clients: 20, clients_per_round: 2}
          - {method: neulite, data.num_clients: 40, clients_per_round: 4}
          - {method: fedavg, data.num_clients: 20, clients_per_round: 2}
        axes:
          seed: [1, 2]
    """))
    grid = sweep.load_grid(path)
    assert [c.values for c in grid.cells] == [
        {"method": m, "data.num_clients": n, "clients_per_round": n // 10, "seed": seed}
        for m, n in [("neulite", 20), ("neulite", 40), ("fedavg", 20)] for seed in (1, 2)
    ]
    assert [(c.config.method, c.config.data.num_clients, c.config.clients_per_round, c.config.seed)
            for c in grid.cells][2:4] == [("neulite", 40, 4, 1), ("neulite", 40, 4, 2)]
    assert len({c.config.run_key for c in grid.cells}) == 6
    assert [c.index for c in grid.cells] == list(range(6))
    assert sweep.read_grid(path).size == 6
    dry = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert dry.exit_code == 0, dry.output
    assert "6 cells of experiment 'cases'" in dry.output
    assert "method=fedavg, data.num_clients=20, clients_per_round=2, seed=2" in dry.output


def test_cells_that_are_one_run_say_so_in_the_dry_run_and_when_skipped(tmp_path, tracking_uri):
    """A case that spells out a default is the same run as one that leaves it out: run once."""
    path = tmp_path / "same.yaml"
    path.write_text(textwrap.dedent("""
        base: {method: fedavg, rounds: 1, clients_per_round: 2, train: {local_epochs: 1}, model: {width: 0.25},
               data: {dataset: synthetic, num_clients: 4, partition: iid}}
        cases:
          - {seed: 42}
          - {seed: 1}
          - {seed: 42, train.lr: 0.01}
    """))
    dry = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert dry.exit_code == 0, dry.output
    lines = [line for line in dry.output.splitlines() if "seed=" in line]
    assert lines[2].endswith("(the same run as cell #0, run once)") and "same run" not in lines[0] + lines[1]
    result = CliRunner().invoke(app, ["sweep", str(path), "--tracking-uri", tracking_uri], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "SKIPPED  #2 seed=42, train.lr=0.01 — the same run as cell #0" in result.output


def test_cases_mix_dotted_and_nested_keys_without_leaking_into_each_other(tmp_path):
    """Two cases sharing one YAML mapping (an anchor) and a nested axis: each cell gets exactly the
    settings its case and axes give, and the file's mappings are left as written."""
    path = tmp_path / "anchors.yaml"
    path.write_text(textwrap.dedent("""
        base: {method: fedavg, rounds: 1, data: {dataset: synthetic, num_clients: 8, partition: dirichlet}}
        cases:
          - {data: &small {num_clients: 12}, clients_per_round: 3}
          - {data: *small, clients_per_round: 4}
        axes:
          data.alpha: [0.1, 0.2]
    """))
    grid = sweep.load_grid(path)
    assert [(c.config.data.num_clients, c.config.clients_per_round, c.config.data.alpha) for c in grid.cells] == [
        (12, 3, 0.1), (12, 3, 0.2), (12, 4, 0.1), (12, 4, 0.2)]
    assert [c.values["data"] for c in grid.cells] == [{"num_clients": 12}] * 4
    assert len({c.config.run_key for c in grid.cells}) == 4
    empty = tmp_path / "empty.yaml"  # an empty option set sets nothing, so it clashes with nothing
    empty.write_text("base: {method: neulite, rounds: 4}\ncases: [{options.evaluate: stage}]\n"
                     "axes: {options: [{}, {curriculum_loss: false}]}\n")
    assert [dict(c.config.options) for c in sweep.load_grid(empty).cells] == [
        {"evaluate": "stage"}, {"evaluate": "stage", "curriculum_loss": False}]


def test_a_failing_cell_is_recorded_and_finished_cells_are_skipped_next_time(grid_file, tracking_uri):
    grid = sweep.load_grid(grid_file)
    first = sweep.run_grid(grid, tracking_uri=tracking_uri)
    assert [o.status for o in first] == ["FINISHED", "FAILED", "FINISHED", "FAILED"]
    assert "partition 'natural' needs a data set with writers" in first[1].reason
    from mlflow.tracking import MlflowClient

    failed = MlflowClient(tracking_uri).get_run(first[1].run_id)
    assert failed.info.status == "FAILED" and "'natural' needs" in failed.data.tags["fedbench.error"]

    second = sweep.run_grid(grid, tracking_uri=tracking_uri)
    assert [o.status for o in second] == ["SKIPPED", "FAILED", "SKIPPED", "FAILED"]
    forced = sweep.run_grid(grid, tracking_uri=tracking_uri, rerun=True)
    assert [o.status for o in forced] == ["FINISHED", "FAILED", "FINISHED", "FAILED"]


def test_a_cell_finished_by_other_code_is_skipped_saying_so_and_reports_name_mixed_versions(tmp_path, tracking_uri):
    """The run key hashes the config, not the code: a sweep still skips a cell finished by an
    older fedbench, but says which, and a table over runs of two versions warns."""
    from mlflow.tracking import MlflowClient

    from fedbench.tracking import provenance

    path = tmp_path / "versions.yaml"
    path.write_text(GRID.replace("tiny-grid", "versions").replace("[iid, natural]", "[iid]"))
    first = sweep.run_grid(sweep.load_grid(path), tracking_uri=tracking_uri)
    assert [o.status for o in first] == ["FINISHED", "FINISHED"]
    MlflowClient(tracking_uri).set_tag(first[0].run_id, provenance.TAG, "a" * 40)
    again = runner.invoke(app, ["sweep", str(path), "--tracking-uri", tracking_uri])
    assert again.exit_code == 0, again.output
    lines = " ".join(again.output.split())
    assert f"SKIPPED #0 seed=1, data.partition=iid — already finished, by code {'a' * 12} (this is" in lines
    assert "SKIPPED #1 seed=2, data.partition=iid — already finished " in lines + " "
    table = runner.invoke(app, ["report", "table1", "--iid", "--experiment", "versions", "--tracking-uri", tracking_uri])
    assert table.exit_code == 0, table.output
    assert "the 2 runs of experiment 'versions' come from 2 code versions" in " ".join(table.output.split())


def test_a_cell_no_device_can_train_is_recorded_as_pr_0_and_reported_as_na(tmp_path, tracking_uri):
    """Spec common.md §1.1: a method whose workload fits no device gets PR 0, the paper's NA cell."""
    path = tmp_path / "na.yaml"
    path.write_text(textwrap.dedent("""
        experiment: no-fit
        base:
          rounds: 1
          clients_per_round: 2
          data: {dataset: synthetic, num_clients: 4, partition: dirichlet}
          model: {name: cnn, width: 1.0}
          train: {local_epochs: 1}
          fleet: {profile: uniform-mb, low_mb: 1, high_mb: 2}  # the full cnn needs more
        axes:
          method: [fedavg, exclusivefl]
    """))
    result = runner.invoke(app, ["sweep", str(path), "--tracking-uri", tracking_uri])
    assert result.exit_code == 0, result.output
    assert "NA #1 method=exclusivefl — no device can train cnn" in " ".join(result.output.split())  # its one-line reason
    outcomes = sweep.run_grid(sweep.load_grid(path), tracking_uri=tracking_uri)
    assert [o.status for o in outcomes] == ["SKIPPED", "SKIPPED"]  # PR 0 is a result: not retried
    table = runner.invoke(app, ["report", "table1", "--experiment", "no-fit", "--tracking-uri", tracking_uri,
                                "--out", str(tmp_path / "reports")])
    assert table.exit_code == 0, table.output
    rows = {line.split(" | ")[0].strip("| "): line for line in table.stdout.splitlines()}
    assert rows["exclusivefl"] == "| exclusivefl | no | NA | 0 |"
    assert rows["fedavg"].startswith("| fedavg | n/a |") and rows["fedavg"].endswith("| 100 |")


def test_parallel_cells_give_the_same_results_as_serial(tmp_path, grid_file):
    grid = sweep.load_grid(grid_file)
    grid = sweep.Grid(grid.experiment, [c for c in grid.cells if c.values["data.partition"] == "iid"])
    serial = sweep.run_grid(grid, tracking_uri=f"sqlite:///{tmp_path / 'a.db'}")
    parallel = sweep.run_grid(grid, tracking_uri=f"sqlite:///{tmp_path / 'b.db'}", max_parallel=2)
    assert [o.final_accuracy for o in serial] == [o.final_accuracy for o in parallel]
    assert all(o.status == "FINISHED" for o in parallel)


def _cells(grid_file, **changes):
    return [dataclasses.replace(c, config=dataclasses.replace(c.config, **changes))
            for c in sweep.load_grid(grid_file).cells]


def test_cells_that_fit_the_cpus_are_not_warned_about(grid_file):
    cells = _cells(grid_file, threads=2)  # 4 cells of 2 threads each
    assert sweep_runner.oversubscription(cells, max_parallel=2, cpus=4) is None
    assert sweep_runner.oversubscription(cells, max_parallel=1, cpus=1) is None  # one at a time: nothing to share
    assert sweep_runner.oversubscription(cells[:1], max_parallel=4, cpus=1) is None  # one cell, however parallel


def test_cells_that_oversubscribe_the_cpus_say_how_many_fit(grid_file):
    cells = _cells(grid_file, threads=2)
    assert sweep_runner.oversubscription(cells, max_parallel=8, cpus=4) == (
        "4 cells at once keep 8 CPU threads busy on 4 CPUs: each runs slower than alone (their idle threads wait "
        "passively, OMP_WAIT_POLICY=PASSIVE, so that they do not stall each other); --max-parallel 2 finishes the "
        "grid sooner")
    workers = _cells(grid_file, threads=2, executor="process", workers=3, executor_threads=2)  # 6 CPUs a cell
    assert "2 cells at once keep 12 CPU threads busy on 8 CPUs" in sweep_runner.oversubscription(workers, 2, 8)
    assert sweep_runner.oversubscription(workers, 2, 8).endswith("--max-parallel 1 finishes the grid sooner")


def test_the_cell_environment_adds_what_the_user_did_not_set_and_restores_it(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with sweep_runner.cell_environment({"OMP_WAIT_POLICY": "PASSIVE"}):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stands
    with sweep_runner.cell_environment({"OMP_WAIT_POLICY": "PASSIVE"}):
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


class RecordingPool:
    """A process pool that runs nothing: it records the wait policy its cell processes would inherit."""

    seen: list[str | None] = []

    def __init__(self, **kwargs):
        RecordingPool.seen.append(os.environ.get("OMP_WAIT_POLICY"))

    def submit(self, fn, index, *args):
        RecordingPool.seen.append(os.environ.get("OMP_WAIT_POLICY"))
        future = Future()
        future.set_result(sweep.CellOutcome(index, "FINISHED"))
        return future

    def shutdown(self, **kwargs):
        pass


@pytest.mark.parametrize(("cpus", "policy"), [(1, "PASSIVE"), (64, None)])
def test_cell_processes_wait_passively_only_where_they_oversubscribe_the_cpus(grid_file, tmp_path, monkeypatch, caplog,
                                                                             cpus, policy):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(sweep_runner, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(RecordingPool, "seen", [])
    monkeypatch.setattr(sweep_runner, "available_cpus", lambda: cpus)
    with caplog.at_level(logging.WARNING, logger="fedbench.sweep.runner"):
        outcomes = sweep.run_grid(sweep.load_grid(grid_file), tracking_uri=f"sqlite:///{tmp_path / 'a.db'}",
                                  max_parallel=2)
    assert [o.status for o in outcomes] == ["FINISHED"] * 4
    assert RecordingPool.seen == [policy] * 5  # the pool and its four cells
    assert ("--max-parallel" in caplog.text) == (policy is not None)
    assert "OMP_WAIT_POLICY" not in os.environ  # the sweep's own environment is left as it was


def test_dry_run_lists_cells_without_running(grid_file):
    result = CliRunner().invoke(app, ["sweep", str(grid_file), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "4 cells of experiment 'tiny-grid'" in result.output and "data.partition=natural" in result.output


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("axes: {seed: 3}\n", "'axes' must map dotted config keys to non-empty lists"),
        ("colours: [1]\n", "unknown key(s) 'colours'"),
        ("axes: {rounds: [0]}\n", "grid cell 0 (rounds=0): rounds (0) must be >= 1"),
        ("base: {method: neulite}\naxes: {options.lambda_max: [0.1, -1]}\n",
         "grid cell 1 (options.lambda_max=-1): options.lambda_max (-1"),
        ("base: {method: fedavg}\naxes: {options.mu: [0.1]}\n", "grid cell 0 (options.mu=0.1): "),
        ("axes: {seed: [1, 2, 1]}\n", "axis 'seed' repeats 1; list each value once"),
        ("experiment: [a]\n", "'experiment' (['a']) must be a name"),
        ("cases: {method: fedavg}\n", "'cases' must be a non-empty list of mappings of dotted config keys"),
        ("cases: [{method: fedavg}, {}]\n", "case 2 ({}) must be a non-empty mapping of dotted config keys"),
        ("cases: [{method: fedavg}, [1]]\n", "case 2 ([1]) must be a non-empty mapping"),
        ("cases: [{1: 2, method: fedavg}]\n", "case 1 has the key 1, which is not a config key"),
        ("cases: [{data.alpha: 0.1, data: {alpha: 0.2}}]\n",
         "case 1 gives 'data.alpha' and 'data.alpha'; give each setting once"),
        ("cases: [{data.num_clients: 12}]\naxes: {data: [{alpha: 0.1}, {num_clients: 4}]}\n",
         "grid cell 1 (data.num_clients=12, data={'num_clients': 4}): case 1 sets 'data.num_clients' and axis 'data' "
         "sets 'data.num_clients'; give each setting once"),
        ("axes: {data: [{alpha: 0.1}], data.alpha: [0.2]}\n",
         "axis 'data' sets 'data.alpha' and axis 'data.alpha' sets 'data.alpha'"),
        ("cases: [{method: fedavg, tracking.experiment: other}]\n",
         "case 1 sets 'tracking.experiment'; every cell of a grid is tracked alike: set tracking in 'base'"),
        ("axes: {tracking: [{enabled: false}]}\n", "axis 'tracking' sets 'tracking'; every cell of a grid is tracked alike"),
        ("cases: [{seed: 1, method: fedavg}]\naxes: {seed: [1, 2]}\n",
         "case 1 sets 'seed', also an axis; set each key in the axes or in the cases, not both"),
        ("cases: [{seed: 1}, {seed: 1}]\n", "'cases' repeats [('seed', 1)]; list each case once"),
        ("cases: [{seed: 1}, {rounds: 0}]\n", "grid cell 1 (rounds=0): rounds (0) must be >= 1"),
    ],
)
def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=None) as info:
        sweep.load_grid(path)
    assert fragment in str(info.value)
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error:")


RESUMABLE = """
experiment: resumable
base:
  method: fedavg
  rounds: 3
  clients_per_round: 2
  data: {dataset: synthetic, num_clients: 4, partition: iid}
  model: {width: 0.25}
  train: {local_epochs: 1}
axes:
  seed: [1]
"""


def test_a_sweep_rerun_resumes_a_cell_killed_mid_run_from_its_checkpoint(tmp_path, tracking_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    from fedbench import engine
    from fedbench.tracking.tracker import MlflowTracker

    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(RESUMABLE))
    (cell,) = sweep.load_grid(path).cells
    config = sweep.runner._with_uri(cell.config, tracking_uri)

    def die_after_first_round(result):
        raise KeyboardInterrupt

    tracker = MlflowTracker(tracking_uri, config.tracking.experiment)
    with pytest.raises(KeyboardInterrupt):
        engine.run(config, tracker=tracker, on_round=die_after_first_round)
    client = MlflowClient(tracking_uri)
    client.update_run(tracker.run_id, "RUNNING")  # what a SIGKILL leaves behind

    (outcome,) = sweep.run_grid(sweep.load_grid(path), tracking_uri=tracking_uri)
    assert outcome.status == "FINISHED" and outcome.run_id == tracker.run_id
    assert outcome.resumed_after_round == 1
    history = sorted(client.get_metric_history(tracker.run_id, "eval/accuracy"), key=lambda m: m.step)
    plain = engine.run(dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, enabled=False)))
    assert [m.value for m in history] == plain.metric("eval/accuracy")
    assert client.get_run(tracker.run_id).info.status == "FINISHED"


def test_a_ray_sweep_runs_each_cell_as_a_ray_task(tmp_path, grid_file):
    ray = pytest.importorskip("ray")
    grid = sweep.load_grid(grid_file)
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = sweep.run_grid(grid, tracking_uri=f"sqlite:///{tmp_path / 'ray.db'}", executor="ray")
    finally:
        if started:
            ray.shutdown()
    assert [o.status for o in on_ray] == ["FINISHED", "FAILED", "FINISHED", "FAILED"]
    assert "partition 'natural' needs a data set with writers" in on_ray[1].reason
    here = sweep.run_grid(grid, tracking_uri=f"sqlite:///{tmp_path / 'here.db'}")
    assert [o.final_accuracy for o in on_ray] == [o.final_accuracy for o in here]


def test_an_unknown_sweep_executor_is_one_line(grid_file):
    result = CliRunner().invoke(app, ["sweep", str(grid_file), "--executor", "slurm"])
    assert result.exit_code == 2 and result.output.startswith("error: sweep executor 'slurm' must be one of")


def test_a_sweep_rerun_refuses_a_malicious_checkpoint_says_so_and_restarts_the_cell(
    tmp_path, tracking_uri, monkeypatch, caplog
):
    """A pickle whose unpickling would run a command, planted as the checkpoint of a cut-short
    cell: the rerun never runs it, says why, and starts the cell over."""
    import logging

    from mlflow.tracking import MlflowClient

    from fedbench.core import checkpoint
    from fedbench.tracking.tracker import MlflowTracker
    from tests.test_checkpoint import _malicious

    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    path = tmp_path / "grid.yaml"
    path.write_text(textwrap.dedent(RESUMABLE))
    (cell,) = sweep.load_grid(path).cells
    config = sweep.runner._with_uri(cell.config, tracking_uri)
    tracker = MlflowTracker(tracking_uri, config.tracking.experiment)
    tracker.start(config, {})  # left RUNNING, as a SIGKILL leaves it
    marker = tmp_path / "pwned"
    _malicious(checkpoint.checkpoint_path(tracker.run_id), config, marker)

    with caplog.at_level(logging.WARNING):
        (outcome,) = sweep.run_grid(sweep.load_grid(path), tracking_uri=tracking_uri)
    assert not marker.exists()
    assert outcome.status == "FINISHED" and outcome.resumed_after_round is None
    assert outcome.run_id != tracker.run_id
    assert f"run {tracker.run_id} cannot be resumed" in caplog.text and "did not write" in caplog.text
    assert MlflowClient(tracking_uri).get_run(outcome.run_id).info.status == "FINISHED"


LONG_GRID = """
experiment: long-grid
base:
  method: fedavg
  rounds: 10000
  clients_per_round: 2
  data: {dataset: synthetic, num_clients: 4, partition: iid}
  model: {name: cnn, width: 0.25}
  threads: 1
axes:
  seed: [1, 2]
"""


def test_sigterm_stops_a_parallel_sweep_at_once_and_marks_its_running_cells_killed(tmp_path):
    """The sweep does not wait for cells that would run for hours: they stop, marked KILLED, and the
    next sweep resumes them."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    grid = tmp_path / "long.yaml"
    grid.write_text(textwrap.dedent(LONG_GRID))
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "FEDBENCH_CHECKPOINTS": str(tmp_path / "ckpt")}
    process = subprocess.Popen(
        [sys.executable, "-m", "fedbench.cli", "sweep", str(grid), "--max-parallel", "2",
         "--tracking-uri", f"sqlite:///{store}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )

    def statuses() -> list[str]:
        try:
            with sqlite3.connect(store) as db:
                return [s for (s,) in db.execute("select status from runs")]
        except sqlite3.Error:  # not created yet
            return []

    def logging_runs() -> int:
        try:
            with sqlite3.connect(store) as db:
                return db.execute("select count(distinct run_uuid) from metrics").fetchone()[0]
        except sqlite3.Error:  # not created yet
            return 0

    deadline = time.monotonic() + 180
    while logging_runs() < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    assert statuses().count("RUNNING") == 2 and logging_runs() == 2, process.communicate(timeout=30)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert sorted(statuses()) == ["KILLED", "KILLED"]


def test_cells_that_differ_only_in_a_label_run_once(tmp_path, tracking_uri):
    """fedavg's `official` preset is the paper's setting: the two cells are one run (one run key)."""
    path = tmp_path / "presets.yaml"
    path.write_text(textwrap.dedent("""
        experiment: presets
        base: {method: fedavg, rounds: 1, clients_per_round: 2, model: {width: 0.25}, train: {local_epochs: 1},
               data: {dataset: synthetic, num_clients: 4, partition: iid}}
        axes:
          preset: [paper, official]
    """))
    outcomes = sweep.run_grid(sweep.load_grid(path), tracking_uri=tracking_uri)
    assert [o.status for o in outcomes] == ["FINISHED", "SKIPPED"]
    assert outcomes[1].reason == "the same run as cell #0"


TYPOS = """
experiment: typos
base: {method: fedavg, rounds: 1, clients_per_round: 2, model: {name: cnn, width: 0.25}, train: {local_epochs: 1},
       data: {dataset: synthetic, num_clients: 4, partition: iid}, fleet: {profile: homogeneous}}
"""


@pytest.mark.parametrize(
    ("base_dataset", "text", "line"),
    [
        ("synthetic", "axes: {method: [fedavg, neulit]}\n",
         "grid cell 1 (method=neulit): unknown method 'neulit' (did you mean 'neulite'?); known: allsmall, "),
        ("synthetc", "axes: {seed: [1, 2]}\n",
         "grid cell 0 (seed=1): unknown dataset 'synthetc' (did you mean 'synthetic'?); known: "),
        ("synthetic", "axes: {data.dataset: [synthetic, synthetc]}\n",
         "grid cell 1 (data.dataset=synthetc): unknown dataset 'synthetc' (did you mean 'synthetic'?); known: "),
        ("synthetic", "axes: {model.name: [cnn, resnet-18]}\n",
         "grid cell 1 (model.name=resnet-18): unknown model 'resnet-18' (did you mean 'resnet18'?); known: "),
        ("synthetic", "cases: [{data.partition: iid}, {data.partition: diriclet}]\n",
         "grid cell 1 (data.partition=diriclet): unknown partitioner 'diriclet' (did you mean 'dirichlet'?); known: "),
        ("synthetic", "axes: {fleet: [{profile: homogeneous}, {profile: unifrom-mb}]}\n",
         "grid cell 1 (fleet={'profile': 'unifrom-mb'}): unknown fleet profile 'unifrom-mb' "
         "(did you mean 'uniform-mb'?); known: "),
    ],
    ids=["method-axis", "dataset-base", "dataset-axis", "model-axis", "partition-case", "fleet-axis"],
)
def test_a_misspelt_registry_name_stops_the_sweep_before_any_cell_runs(tmp_path, tracking_uri, base_dataset, text,
                                                                       line):
    """As `fedbench run` says it ("did you mean"), one line naming the cell, exit 2, with and without
    --dry-run, and no cell has run (the good cells before it neither)."""
    path = tmp_path / "typos.yaml"
    path.write_text(textwrap.dedent(TYPOS).replace("dataset: synthetic", f"dataset: {base_dataset}") + text)
    with pytest.raises(ConfigError) as info:
        sweep.load_grid(path)
    assert str(info.value).startswith(line)
    for args in (["--dry-run"], ["--tracking-uri", tracking_uri]):
        result = CliRunner().invoke(app, ["sweep", str(path), *args], env={"COLUMNS": "80"})
        assert result.exit_code == 2, result.output
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {line}"), result.stderr
        assert "FINISHED" not in result.output and "FAILED" not in result.output
    assert not Path(tracking_uri.removeprefix("sqlite:///")).exists()  # no cell ran: the store was never opened


def test_a_dry_run_lists_the_cells_before_a_misspelt_name_and_not_after(tmp_path):
    path = tmp_path / "typos.yaml"
    path.write_text(textwrap.dedent(TYPOS) + "axes: {method: [fedavg, neulit, neulite]}\n")
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "method=fedavg" in result.stdout and "method=neulite" not in result.stdout
    assert result.stderr.startswith("error: grid cell 1 (method=neulit): unknown method 'neulit'")


def test_a_name_registered_under_a_misspelt_entry_point_group_says_so_before_any_cell_runs(tmp_path, monkeypatch):
    """The same sentence as `fedbench run`: a plugin's name under a group fedbench does not read."""
    from fedbench import registry

    monkeypatch.setattr(registry, "stray_registration",
                        lambda kind, name: ": registered under 'fedbench.method'" if name == "fedavgx" else "")
    path = tmp_path / "stray.yaml"
    path.write_text(textwrap.dedent(TYPOS) + "axes: {method: [fedavg, fedavgx]}\n")
    with pytest.raises(ConfigError) as info:
        sweep.load_grid(path)
    assert str(info.value).startswith(
        "grid cell 1 (method=fedavgx): unknown method 'fedavgx': registered under 'fedbench.method'; known: ")
