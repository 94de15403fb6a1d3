"""A tiny generated image set for tests and smoke runs: 10 classes of 3×16×16 images.

Each class has a fixed random prototype; a sample is its prototype plus noise,
so a small model learns it within a few rounds. Generated from a fixed seed,
hence identical on every machine, and needs no files.
"""

from __future__ import annotations

import numpy as np
import torch

from fedbench.data import ImageDataset

NUM_CLASSES = 10
SHAPE = (3, 16, 16)
NUM_TRAIN, NUM_TEST = 1200, 300


def _make(num: int, prototypes: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(num) % NUM_CLASSES
    rng.shuffle(labels)
    noise = rng.normal(0.0, 40.0, size=(num, *SHAPE))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load(data_dir: str | None = None) -> ImageDataset:
    """``data_dir`` is ignored: the set is generated."""
    rng = np.random.default_rng(20240613)
    prototypes = rng.uniform(40, 215, size=(NUM_CLASSES, *SHAPE))
    train_x, train_y = _make(NUM_TRAIN, prototypes, rng)
    test_x, test_y = _make(NUM_TEST, prototypes, rng)
    return ImageDataset(
        name="synthetic",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=NUM_CLASSES,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
