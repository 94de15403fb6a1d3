"""The command line: every bad input is one line, exit code 2, no traceback."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from fedbench.cli.main import app
from tests.conftest import FASHION_MNIST_DIR, requires_fashion_mnist

runner = CliRunner()
TINY = ["--method", "fedavg", "--dataset", "synthetic", "--clients", "6", "--clients-per-round", "2", "--rounds", "1",
        "--local-epochs", "1", "--no-tracking"]


def _fails_with(args: list[str], *fragments: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    text = " ".join(result.output.split())
    assert text.startswith("error:"), text
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in text, text


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--method", "fedavgg"], ["unknown method 'fedavgg'", "did you mean 'fedavg'", "known:"]),
        (["--dataset", "fashion-mnistt"], ["unknown dataset 'fashion-mnistt'", "did you mean 'fashion-mnist'"]),
        (["--model", "cnnn"], ["unknown model 'cnnn'", "did you mean 'cnn'"]),
        (["--partition", "dirichle"], ["unknown partitioner 'dirichle'", "did you mean 'dirichlet'"]),
        (["--rounds", "0"], ["rounds (0) must be >= 1"]),
        (["--rounds", "10000000000"], ["rounds (10,000,000,000) is above 1,000,000"]),
        (["--threads", "100000"], ["threads (100000) is above", "per CPU of this machine"]),
        (["--executor", "process", "--workers", "100000"], ["workers (100000) is above", "per CPU of this machine"]),
        (["--clients", "0"], ["num_clients (0) must be >= 1"]),
        (["--batch-size", "1"], ["batch_size (1) must be >= 2: a batch of one sample trains nothing"]),
        (["--local-epochs", "-1"], ["local_epochs (-1) must be >= 1"]),
        (["--clients-per-round", "7"], ["clients_per_round (7) exceeds num_clients (6)"]),
        (["--alpha", "0"], ["alpha (0.0) must be > 0"]),
        (["--alpha", "-2"], ["alpha (-2.0) must be > 0"]),
        (["--width", "1.5"], ["model.width (1.5) must be in (0, 1]"]),
        (["--weighting", "median"], ["weighting ('median') must be one of uniform, samples"]),
        (["--opt", "mu=1"], ["options of FedAvg takes no keys, got 'mu'"]),
        (["--opt", "mu"], ["must look like key=value"]),
        (["--experiment", ""], ["tracking.experiment ('') must be a name"]),
    ],
)
def test_bad_run_flags_fail_with_one_line(args, fragments):
    _fails_with([*TINY_RUN, *args], *fragments)


TINY_RUN = ["run", *TINY]


def test_missing_yaml_file_is_named(tmp_path):
    _fails_with([*TINY_RUN, "--config", str(tmp_path / "nope.yaml")], "nope.yaml does not exist")


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 3\ndata: [1,\n")
    _fails_with([*TINY_RUN, "--config", str(bad)], "is not valid YAML", "line")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--data-dir", ""], "--data-dir is empty"),
    (["--resume", "abc", "--no-tracking"], "--resume continues a run logged in MLflow"),
])
def test_an_empty_data_dir_or_a_resume_without_tracking_is_one_line(args, fragment):
    _fails_with(["run", *args], fragment)


def test_an_empty_yaml_file_is_refused_not_run_with_every_default(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# settings to come\n")
    _fails_with([*TINY_RUN, "--config", str(empty)], "empty.yaml holds no settings (it is empty or only comments)")


def test_a_yaml_file_that_repeats_a_key_is_refused_naming_the_key_and_line(tmp_path):
    repeated = tmp_path / "twice.yaml"
    repeated.write_text("rounds: 20\ntrain:\n  lr: 0.1\nrounds: 200\n")
    _fails_with([*TINY_RUN, "--config", str(repeated)], "twice.yaml repeats the key 'rounds' at line 4")


def test_a_yaml_merge_key_may_still_be_overridden(tmp_path):
    from fedbench.config import load_yaml

    merged = tmp_path / "merge.yaml"
    merged.write_text("common: &common {rounds: 2, seed: 1}\nrun: {<<: *common, rounds: 3}\n")
    assert load_yaml(merged)["run"] == {"rounds": 3, "seed": 1}


def test_unreadable_yaml_is_reported(tmp_path):
    folder = tmp_path / "cfg.yaml"
    folder.mkdir()  # a directory where a file was expected
    _fails_with([*TINY_RUN, "--config", str(folder)], "cfg.yaml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("roundz: 3\n", "unknown config key 'roundz'"),
        ("data:\n  alpah: 0.1\n", "unknown config key 'alpah' in data"),
        ("seed: many\n", "seed ('many') must be an integer"),
        ("- 1\n- 2\n", "must hold a mapping"),
    ],
)
def test_bad_yaml_content_is_one_line(tmp_path, text, fragment):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    _fails_with([*TINY_RUN, "--config", str(path)], fragment)


def test_flags_override_the_yaml_file(tmp_path):
    from fedbench.config import make_config

    path = tmp_path / "run.yaml"
    path.write_text("rounds: 9\ndata:\n  dataset: synthetic\n  num_clients: 6\nclients_per_round: 2\n")
    config = make_config(path, {"rounds": 3})
    assert (config.rounds, config.data.dataset, config.data.num_clients) == (3, "synthetic", 6)


def test_missing_data_dir_is_one_line(tmp_path):
    _fails_with(["run", "--data-dir", str(tmp_path / "nowhere"), "--no-tracking"], "nowhere does not exist")


def test_empty_data_dir_is_an_error_not_a_fallback(tmp_path):
    _fails_with(["run", "--data-dir", str(tmp_path), "--no-tracking"], "does not hold the data set",
                "dataset-fashion-mnist")


@requires_fashion_mnist
def test_truncated_data_file_is_named(tmp_path):
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(f"{FASHION_MNIST_DIR}/{name}", tmp_path / name)
    raw = gzip.decompress(open(f"{FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz", "rb").read())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2], compresslevel=1))
    _fails_with(["run", "--data-dir", str(tmp_path), "--no-tracking"], "train-images-idx3-ubyte.gz is truncated")


def test_corrupt_gzip_is_named(tmp_path):
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (tmp_path / f"{name}.gz").write_bytes(b"this is not gzip")
    _fails_with(["run", "--data-dir", str(tmp_path), "--no-tracking"], "train-images-idx3-ubyte.gz cannot be read")


def test_unreachable_tracking_uri_fails_before_training():
    args = [*TINY_RUN[:-1], "--tracking-uri", "http://127.0.0.1:9"]
    _fails_with(args, "cannot reach the MLflow tracking store at http://127.0.0.1:9")


def test_run_prints_the_final_accuracy(tmp_path):
    result = runner.invoke(app, TINY_RUN)
    assert result.exit_code == 0, result.output
    assert "fedavg on synthetic: last evaluation" in result.output


@pytest.mark.parametrize("kind", ["methods", "datasets", "models", "partitioners"])
def test_list_json_names_the_builtins(kind):
    result = runner.invoke(app, ["list", kind, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)[kind]
    # Installed plugins (CI installs examples/fedprox-plugin) are listed too, as not built-in.
    assert any(row["builtin"] for row in rows)
    assert all(row["builtin"] == (row["distribution"] == "fedbench") for row in rows)


def test_list_rejects_an_unknown_kind():
    result = runner.invoke(app, ["list", "widgets"])
    assert result.exit_code != 0


def test_help_shows_defaults():
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "240"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "(default: 64)" in text and "(default: fashion-mnist)" in text


def test_a_tracked_run_logs_through_the_helper_process_into_the_store(tmp_path):
    """The CLI's real path: MLflow in a helper process started before torch is imported."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [arg for arg in TINY if arg != "--no-tracking"]
    result = runner.invoke(app, ["run", *args, "--tracking-uri", uri, "--experiment", "cli-helper"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cli-helper").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "fedavg"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0]


def test_an_unreachable_tracking_store_is_one_line_and_leaves_no_helper_behind():
    from pathlib import Path

    _fails_with(["run", *[a for a in TINY if a != "--no-tracking"], "--tracking-uri", "http://127.0.0.1:9"],
                "cannot reach the MLflow tracking store at http://127.0.0.1:9")
    helpers = []  # this process's own helpers only: other runs on the machine may have theirs
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"fedbench.tracking.helper_process" in cmdline.read_bytes():
                parent = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == os.getpid():
                    helpers.append(cmdline.parent.name)
        except OSError:  # the process ended while we looked
            pass
    assert helpers == []


@pytest.mark.parametrize("args", [
    ["run", "--rounds", "abc"], ["run", "--bogus", "3"], ["runn"], ["list", "foo"], ["list"],
    ["checkpoints", "foo"], ["report", "info-plane"],
])
def test_a_bad_flag_value_or_command_is_a_usage_error_with_exit_code_2_not_a_bug(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Usage: fedbench" in result.output and "unexpected" not in result.output


def test_a_stopped_run_resumes_from_a_moved_data_folder_and_names_the_flags_it_ignores(
    tmp_path, tracking_uri, monkeypatch
):
    """The data folder is not part of the run key: --resume takes --data-dir; flags that would change
    the run (here --rounds, --lr) are ignored, and said to be."""
    import numpy as np

    from fedbench import engine
    from fedbench.config import make_config
    from fedbench.datasets.idx import write_idx
    from fedbench.tracking.tracker import MlflowTracker

    monkeypatch.setenv("FEDBENCH_CHECKPOINTS", str(tmp_path / "checkpoints"))
    first = tmp_path / "first"
    first.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("t10k", 50)):
        write_idx(first / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(first / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    config = make_config(overrides={
        "method": "fedavg", "data": {"dataset": "fashion-mnist", "data_dir": str(first), "num_clients": 4},
        "model": {"name": "cnn", "width": 0.25}, "train": {"local_epochs": 1}, "clients_per_round": 2, "rounds": 3,
        "tracking": {"uri": tracking_uri},
    })
    tracker = MlflowTracker(tracking_uri)
    stopped = engine.run(config, tracker=tracker, stop_after_s=0)  # stops after round 1, checkpoint kept
    assert stopped.stopped and len(stopped.rounds) == 1
    moved = first.rename(tmp_path / "moved")

    lost = runner.invoke(app, ["run", "--resume", tracker.run_id, "--tracking-uri", tracking_uri])
    assert lost.exit_code == 2 and "does not exist" in lost.output
    result = runner.invoke(app, ["run", "--resume", tracker.run_id, "--tracking-uri", tracking_uri,
                                 "--data-dir", str(moved), "--rounds", "9", "--lr", "5"])
    assert result.exit_code == 0, result.output
    assert (f"--resume continues run {tracker.run_id} with its own config; ignored: --lr, --rounds"
            in " ".join(result.output.split()))
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(tracker.run_id, "eval/accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]  # the run's own 3 rounds, not 9



def test_a_reader_that_closes_the_pipe_early_is_no_bug_report(monkeypatch):
    from fedbench.cli import common, listing

    def closed_pipe(kind):
        raise BrokenPipeError(32, "Broken pipe")  # what printing raises once `| head` has its lines

    monkeypatch.setattr(listing.registry, "available", closed_pipe)
    monkeypatch.setattr(common, "_silence_stdout", lambda: None)  # the runner's stdout is no pipe
    result = runner.invoke(app, ["list", "methods"])
    assert result.exit_code == 1 and "unexpected" not in result.output and "bug" not in result.output


def test_a_run_whose_output_reader_goes_away_finishes_its_rounds(tmp_path):
    """`fedbench run ... 2>&1 | head -1`, or a dropped ssh connection: rich would end the program on the
    closed pipe, losing the rounds still to come; the run finishes them unheard."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = [sys.executable, "-m", "fedbench.cli", "run", "--method", "fedavg", "--dataset", "synthetic",
               "--clients", "4", "--clients-per-round", "2", "--rounds", "4", "--local-epochs", "1",
               "--threads", "1", "--experiment", "pipe", "--tracking-uri", uri]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "FEDBENCH_CHECKPOINTS": str(tmp_path / "ckpt")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    assert process.stdout is not None
    lines = iter(process.stdout.readline, b"")  # ends if the process does
    assert any(line.startswith(b"round 1/4") for line in lines)
    process.stdout.close()  # the reader stops, as `| head -1` does
    assert process.wait(timeout=120) == 0
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pipe").experiment_id])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "eval/accuracy")) == 4
