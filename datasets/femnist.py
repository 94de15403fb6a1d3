"""FEMNIST (LEAF; Caldas et al., 2018): 62-class handwritten characters, 28×28 grey, one writer per user.

Read from LEAF's JSON shards ``train/*.json`` and ``test/*.json`` (the output of
LEAF's ``preprocess.sh``; the ``data/`` folder of ``leaf/data/femnist`` works
too). Each shard holds ``users``, ``num_samples`` and ``user_data`` (per user
``x``: 784 floats in [0, 1], ``y``: labels 0..61 — digits, then upper-, then
lower-case letters). LEAF's ``x`` is the 8-bit grey NIST scan divided by 255:
1.0 is the white background and ink is near 0 (the reverse of MNIST); it is
kept so, not inverted. Only the users listed in ``users`` are read (LEAF's
split leaves empty ``user_data`` entries for writers it dropped). LEAF splits
each writer's samples into train and test, so the test set is the union of the
test shards. The writer of every training sample is kept in ``train_writers``
for the ``natural`` partitioner. Pixels are stored as uint8 (round(x·255)); the
normalisation is the mean and std of all the training set's pixels. No
augmentation: mirroring a character changes it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from fedbench.data import ImageDataset
from fedbench.datasets.layout import Layout, find
from fedbench.datasets.transforms import pixel_mean_std
from fedbench.errors import DataCorruptError

log = logging.getLogger(__name__)

NUM_CLASSES = 62
SIDE_PX = 28
LAYOUT = Layout(
    name="FEMNIST",
    subdir="femnist",
    variants={"LEAF": ["train", "test"], "LEAF tree": ["data/train", "data/test"]},
    how_to_get=(
        "pass --data-dir DIR holding LEAF's train/*.json and test/*.json "
        "(run LEAF's data/femnist/preprocess.sh, e.g. '-s niid --sf 1.0 -k 0 -t sample')"
    ),
)


def _read_shard(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            shard = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataCorruptError(
            f"{path} is not readable JSON ({exc}); it may be truncated: regenerate it with LEAF"
        ) from exc
    if not isinstance(shard, dict) or not {"users", "user_data"} <= shard.keys():
        raise DataCorruptError(f"{path} lacks the LEAF keys 'users' and 'user_data'; is it a LEAF shard?")
    return shard


def _user_arrays(path: Path, user: str, record: object, declared: int | None) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(record, dict) or "x" not in record or "y" not in record:
        raise DataCorruptError(f"{path}: user_data['{user}'] lacks 'x' and 'y'; regenerate the file with LEAF")
    try:
        pixels = np.asarray(record["x"], dtype=np.float32).reshape(-1, SIDE_PX * SIDE_PX)
        labels = np.asarray(record["y"], dtype=np.int64).reshape(-1)
    except (ValueError, TypeError) as exc:
        raise DataCorruptError(
            f"{path}: user '{user}' has samples that are not {SIDE_PX * SIDE_PX} numbers each ({exc})"
        ) from exc
    if pixels.shape[0] != labels.shape[0] or (declared is not None and declared != labels.shape[0]):
        raise DataCorruptError(
            f"{path}: user '{user}' has {pixels.shape[0]} images, {labels.shape[0]} labels and "
            f"num_samples {declared}; regenerate the file with LEAF"
        )
    if pixels.size and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise DataCorruptError(f"{path}: user '{user}' has pixel values outside [0, 1]; expected LEAF's scaling")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataCorruptError(f"{path}: user '{user}' has labels outside 0..{NUM_CLASSES - 1}")
    return np.rint(pixels * 255.0).astype(np.uint8), labels


def _read_split(folder: Path, writer_ids: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, labels and writer ids of every shard in ``folder``, in file then user order."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataCorruptError(f"{folder} holds no .json shards; expected LEAF's output (e.g. all_data_0_*.json)")
    images, labels, writers = [], [], []
    for path in files:
        shard = _read_shard(path)
        counts = shard.get("num_samples")
        users = shard["users"]
        if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
            raise DataCorruptError(f"{path}: 'num_samples' does not list one count per user")
        for position, user in enumerate(users):
            if user not in shard["user_data"]:
                raise DataCorruptError(f"{path}: user '{user}' is listed in 'users' but has no 'user_data'")
            declared = int(counts[position]) if counts is not None else None
            x, y = _user_arrays(path, user, shard["user_data"][user], declared)
            writer = writer_ids.setdefault(user, len(writer_ids))
            images.append(x)
            labels.append(y)
            writers.append(np.full(y.shape[0], writer, dtype=np.int64))
    if not labels or sum(y.size for y in labels) == 0:
        raise DataCorruptError(f"the shards in {folder} hold no samples; regenerate them with LEAF")
    pixels = np.concatenate(images).reshape(-1, 1, SIDE_PX, SIDE_PX)
    return pixels, np.concatenate(labels), np.concatenate(writers)


def load(data_dir: str | None = None) -> ImageDataset:
    """FEMNIST from LEAF JSON shards, with the writer of every training sample."""
    folder = find(LAYOUT, data_dir)
    root = folder if LAYOUT.complete_variant(folder) == "LEAF" else folder / "data"
    writer_ids: dict[str, int] = {}
    train_x, train_y, train_writers = _read_split(root / "train", writer_ids)
    test_x, test_y, _ = _read_split(root / "test", dict(writer_ids))
    train_images = torch.from_numpy(train_x)
    mean, std = pixel_mean_std(train_images)
    log.info("FEMNIST loaded from %s: %d writers, %d train samples", root, len(writer_ids), train_y.size)
    return ImageDataset(
        name="femnist",
        train_images=train_images,
        train_labels=torch.from_numpy(train_y),
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y),
        num_classes=NUM_CLASSES,
        mean=mean,
        std=std,
        train_writers=train_writers,
    )
