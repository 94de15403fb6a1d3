"""Shared fixtures: tiny, offline, deterministic."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Hermetic: no test reads or writes the user's trace cache (tests/test_trace_cache.py turns one on).
os.environ["FEDBENCH_TRACE_CACHE"] = "off"
# Hermetic: every run records one code version, whether or not this checkout has uncommitted
# changes (tests/test_provenance.py tests the real one).
os.environ["FEDBENCH_CODE_VERSION"] = "fedbench-under-test"
torch.set_num_threads(2)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def tiny_config():
    """A RunConfig that trains the cnn on the synthetic set in well under a second per round."""
    from fedbench.config import make_config

    return make_config(
        overrides={
            "method": "fedavg",
            "data": {"dataset": "synthetic", "num_clients": 8, "partition": "iid"},
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
            "model": {"name": "cnn", "width": 0.25},
            "clients_per_round": 3,
            "rounds": 2,
            "tracking": {"enabled": False},
        }
    )


@pytest.fixture
def synthetic_data():
    from fedbench.datasets.synthetic import load

    return load()


@pytest.fixture
def tracking_uri(tmp_path):
    """A throw-away local MLflow store."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


requires_fashion_mnist = pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR) and not os.environ.get("FEDBENCH_DATA"),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
