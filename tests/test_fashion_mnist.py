"""The real default data set, from the Debian package (skipped where it is not installed)."""

from __future__ import annotations

import dataclasses

import torch

from fedbench import engine
from fedbench.datasets.fashion_mnist import load
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
