"""The default data set: the real files from the Debian package (skipped where it is not installed),
and ``fedbench run`` on generated IDX copies that are not Fashion-MNIST (always run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fedbench import engine
from fedbench.cli.main import app
from fedbench.datasets.fashion_mnist import load
from fedbench.datasets.idx import write_idx
from tests.conftest import FASHION_MNIST_DIR, requires_fashion_mnist


@requires_fashion_mnist
def test_fashion_mnist_loads_the_standard_split():
    data = load(FASHION_MNIST_DIR)
    assert data.train_images.shape == (60_000, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (10_000, 1, 28, 28)
    assert torch.equal(torch.bincount(data.train_labels), torch.full((10,), 6000))
    images, _ = data.train_batch(torch.arange(512))
    assert abs(float(images.mean())) < 0.2 and 0.8 < float(images.std()) < 1.2  # normalised


@requires_fashion_mnist
def test_one_fedavg_round_on_fashion_mnist_beats_chance(tiny_config):
    config = dataclasses.replace(
        tiny_config,
        data=dataclasses.replace(tiny_config.data, dataset="fashion-mnist", data_dir=FASHION_MNIST_DIR, num_clients=100),
        clients_per_round=2,
        rounds=1,
    )
    result = engine.run(config)
    assert result.metric("eval/accuracy")[0] > 0.3


def _idx_copy(folder: Path, train_images: tuple[int, ...], test_images: tuple[int, ...]) -> Path:
    """Four real IDX files whose image arrays have the given shapes (labels to match)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, shape in (("train", train_images), ("t10k", test_images)):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, shape, dtype=np.uint8))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, shape[0]).astype(np.uint8))
    return folder


@pytest.mark.parametrize(
    ("train", "test", "named"),
    [
        ((600, 14, 56), (100, 14, 56), "train-images-idx3-ubyte.gz holds images of shape 600×14×56, expected N×28×28"),
        ((600, 14, 56), (100, 28, 28), "train-images-idx3-ubyte.gz holds images of shape 600×14×56, expected N×28×28"),
        ((600, 28, 28), (0, 28, 28), "t10k-images-idx3-ubyte.gz holds no images (shape 0×28×28"),
    ],
    ids=["both-splits-14x56", "train-only-14x56", "empty-test-split"],
)
def test_a_run_on_files_that_are_not_fashion_mnist_exits_2_naming_the_file(tmp_path, train, test, named):
    """Before the fix these trained (exit 0, or accuracy 0.0 on no test images) or died with exit 1
    ("unexpected RuntimeError: mat1 and mat2 shapes cannot be multiplied")."""
    folder = _idx_copy(tmp_path / "fashion-mnist", train, test)
    result = CliRunner().invoke(app, ["run", "--data-dir", str(folder), "--clients", "4", "--clients-per-round", "2",
                                      "--rounds", "1", "--no-tracking"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert text.startswith("error:") and named in text and "point --data-dir at the original" in text, text
    assert "unexpected" not in text and "Traceback" not in result.output
