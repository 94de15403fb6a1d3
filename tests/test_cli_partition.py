"""`fedbench partition` through the real CLI app: statistics, plot, and one-line errors (exit code 2)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fedbench.cli.main import app
from fedbench.datasets.cinic10 import CLASSES

runner = CliRunner()


@pytest.fixture(autouse=True)
def hermetic_search(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


def _partition(*args: str):
    return runner.invoke(app, ["partition", *args])


def _leaf_shards(root, broken: bool = False):
    """FEMNIST as LEAF writes it: three writers with 4, 2 and 3 training samples."""
    rng = np.random.default_rng(0)
    users = ["f0001_01", "f0002_07", "f0003_11"]
    for split, counts in (("train", (4, 2, 3)), ("test", (1, 1, 1))):
        (root / split).mkdir(parents=True)
        data = {u: {"x": (rng.integers(0, 256, (c, 784)) / 255).tolist(), "y": rng.integers(0, 62, c).tolist()}
                for u, c in zip(users, counts, strict=True)}
        text = json.dumps({"users": users, "num_samples": list(counts), "user_data": data})
        (root / split / f"all_data_0_{split}.json").write_text(text[: len(text) // 2] if broken else text)


def _error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_partition_json_reports_every_client_and_sums_to_the_training_set():
    result = _partition("--dataset", "synthetic", "--partition", "dirichlet", "--alpha", "0.5", "--clients", "12",
                        "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_clients"] == 12 and len(report["clients"]) == 12
    assert sum(c["size"] for c in report["clients"]) == report["num_train"] == report["num_samples"] == 1200
    assert report["size_min"] >= 1 and report["alpha"] == 0.5 and report["seed"] == 42


def test_partition_is_the_same_for_the_same_seed_and_differs_for_another():
    base = ["--dataset", "synthetic", "--partition", "dirichlet", "--clients", "8", "--json"]
    first, again = _partition(*base, "--seed", "3"), _partition(*base, "--seed", "3")
    other = _partition(*base, "--seed", "4")
    assert json.loads(first.stdout) == json.loads(again.stdout)
    assert json.loads(first.stdout)["clients"] != json.loads(other.stdout)["clients"]


def test_partition_prints_a_summary_table_and_writes_a_png_plot(tmp_path):
    plot = tmp_path / "mix.png"
    result = _partition("--dataset", "synthetic", "--partition", "shards", "--clients", "10", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert "classes per client" in result.stdout and "label entropy (bits)" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_natural_partition_of_femnist_gives_one_client_per_writer(tmp_path):
    _leaf_shards(tmp_path / "femnist")
    result = _partition("--dataset", "femnist", "--partition", "natural", "--clients", "3",
                        "--data-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert [c["size"] for c in json.loads(result.stdout)["clients"]] == [4, 2, 3]
    grouped = _partition("--dataset", "femnist", "--partition", "writer-groups", "--clients", "2",
                         "--data-dir", str(tmp_path), "--json")
    assert grouped.exit_code == 0, grouped.output
    sizes = sorted(c["size"] for c in json.loads(grouped.stdout)["clients"])  # all 9 samples, whole writers
    assert sum(sizes) == 9 and sizes in ([3, 6], [4, 5], [2, 7])


# ------------------------------------------------------------------ bad input: one line, exit code 2
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--dataset", "cifar-10", "--clients", "4"], "unknown dataset 'cifar-10' (did you mean 'cifar10'?)"),
        (["--dataset", "synthetic", "--partition", "shard", "--clients", "4"], "unknown partitioner 'shard' (did you mean 'shards'?)"),
        (["--dataset", "synthetic", "--alpha", "0", "--clients", "4"], "data.alpha (0.0) must be > 0"),
        (["--dataset", "synthetic", "--alpha", "-0.5", "--clients", "4"], "data.alpha (-0.5) must be > 0"),
        (["--dataset", "synthetic", "--partition", "iid", "--clients", "5000"],
         "num_clients (5000) exceeds the number of training samples (1200)"),
        (["--dataset", "synthetic", "--partition", "natural", "--clients", "4"],
         "partition 'natural' needs a data set with writers"),
        (["--dataset", "synthetic", "--dirichlet-variant", "cumulative", "--clients", "4"],
         "data.dirichlet_variant ('cumulative')"),
    ],
    ids=["unknown-dataset", "unknown-partitioner", "alpha-zero", "alpha-negative", "too-many-clients",
         "natural-without-writers", "bad-variant"],
)
def test_bad_arguments_are_one_red_line(args, expected):
    assert expected in _error_line(_partition(*args))


def test_a_missing_data_folder_is_one_line(tmp_path):
    line = _error_line(_partition("--dataset", "cifar10", "--data-dir", str(tmp_path / "absent")))
    assert "absent does not exist" in line


def test_a_cifar_folder_with_a_missing_batch_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_4", "data_batch_5", "test_batch"):
        (folder / name).write_bytes(b"")
    line = _error_line(_partition("--dataset", "cifar10", "--data-dir", str(tmp_path)))
    assert "missing data_batch_3" in line


def test_a_truncated_cifar_pickle_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    (folder / "data_batch_4").write_bytes(batch[:40])
    line = _error_line(_partition("--dataset", "cifar10", "--data-dir", str(tmp_path)))
    assert "data_batch_4 is not a readable CIFAR pickle batch" in line


def test_a_truncated_cinic_png_names_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="PNG")
    for split in ("train", "test"):
        for cls in CLASSES:
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / "a.png").write_bytes(buffer.getvalue())
    (tmp_path / "train" / "deer" / "a.png").write_bytes(buffer.getvalue()[:30])
    line = _error_line(_partition("--dataset", "cinic10", "--clients", "2", "--data-dir", str(tmp_path)))
    assert f"{tmp_path / 'train' / 'deer' / 'a.png'} cannot be decoded" in line


def test_a_truncated_leaf_json_names_the_file(tmp_path):
    _leaf_shards(tmp_path / "femnist", broken=True)
    line = _error_line(_partition("--dataset", "femnist", "--partition", "natural", "--clients", "3",
                                  "--data-dir", str(tmp_path)))
    assert "all_data_0_train.json is not readable JSON" in line


def test_an_unwritable_plot_path_is_one_line(tmp_path):
    line = _error_line(_partition("--dataset", "synthetic", "--clients", "4",
                                  "--plot", str(tmp_path / "no-such-dir" / "mix.png")))
    assert "--plot" in line and "cannot be written" in line
