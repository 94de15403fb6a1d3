"""Fashion-MNIST (Xiao et al., 2017): 60,000 train / 10,000 test 28×28 grey images, 10 classes.

The default data set of fedbench: real, small, and installable offline on
Debian (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fedbench.data import ImageDataset, locate, not_found, user_cache_dir
from fedbench.datasets.idx import read_idx
from fedbench.errors import DataCorruptError

log = logging.getLogger(__name__)

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)
SUBDIR = "fashion-mnist"
HOW_TO_GET = (
    "pass --data-dir DIR holding the four IDX files (train-images-idx3-ubyte[.gz], ...), "
    "or on Debian run 'apt-get install dataset-fashion-mnist', or go online once so torchvision can download it"
)
MEAN, STD = (0.2860,), (0.3530,)


def _file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _is_complete(folder: Path) -> bool:
    return all(_file(folder, stem) is not None for stem in FILES.values())


def _torchvision_download() -> Path | None:
    """Download through torchvision into the user cache; ``None`` when offline."""
    try:
        from torchvision.datasets import FashionMNIST

        root = user_cache_dir()
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"
    except Exception as exc:  # any network failure means: not available
        log.info("torchvision download of Fashion-MNIST failed: %s", exc)
        return None


def load(data_dir: str | None = None) -> ImageDataset:
    """Locate (``--data-dir``, ``$FEDBENCH_DATA``, cache, Debian package, download) and load."""
    folder = locate(data_dir, SUBDIR, _is_complete, system_dirs=SYSTEM_DIRS, how_to_get=HOW_TO_GET)
    if folder is None:
        cached = user_cache_dir() / "FashionMNIST" / "raw"
        folder = cached if cached.is_dir() and _is_complete(cached) else _torchvision_download()
    if folder is None:
        raise not_found("Fashion-MNIST", data_dir, SUBDIR, SYSTEM_DIRS, HOW_TO_GET)
    arrays = {key: read_idx(_file(folder, stem)) for key, stem in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataCorruptError(
                f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, labels {labels.shape}"
            )
        if labels.size and labels.max() > 9:
            raise DataCorruptError(f"Fashion-MNIST {split} labels in {folder} exceed 9; fetch the data again")
    log.info("Fashion-MNIST loaded from %s", folder)
    return ImageDataset(
        name="fashion-mnist",
        train_images=torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        num_classes=10,
        mean=MEAN,
        std=STD,
    )
