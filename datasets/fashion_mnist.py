"""Fashion-MNIST (Xiao et al., 2017): 60,000 train / 10,000 test 28×28 grey images, 10 classes.

The default data set of fedbench: real, small, and installable offline on
Debian (``apt-get install dataset-fashion-mnist``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fedbench.data import ImageDataset, candidate_dirs, locate, not_found, user_cache_dir
from fedbench.datasets.idx import read_idx
from fedbench.errors import DataCorruptError, DataNotFoundError

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
IMAGE_SIZE = (28, 28)
REFETCH = "delete it and fetch the data set again, or point --data-dir at the original Fashion-MNIST files"


def _file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path) -> list[str]:
    """The IDX files (by stem: either ``stem`` or ``stem.gz`` will do) that ``folder`` lacks."""
    return [stem for stem in FILES.values() if _file(folder, stem) is None]


def _is_complete(folder: Path) -> bool:
    return not _missing(folder)


def _raise_if_partial(data_dir: str | None) -> None:
    """A searched folder holding some but not all four files is a broken copy: name what it lacks,
    rather than the generic "not found" or a download that would hide it."""
    root = Path(data_dir).expanduser() if data_dir else None
    folders = [root, root / SUBDIR] if root else candidate_dirs(None, SUBDIR, SYSTEM_DIRS)
    for folder in folders:
        absent = _missing(folder) if folder.is_dir() else []
        if 0 < len(absent) < len(FILES):
            raise DataNotFoundError(
                f"Fashion-MNIST in {folder} is incomplete: missing {', '.join(f'{s}[.gz]' for s in absent)}; "
                f"restore those files or {HOW_TO_GET}"
            )


def _find(data_dir: str | None) -> Path | None:
    """The folder of a complete local copy (see :func:`fedbench.data.locate`), else ``None``;
    a partial copy in a searched folder is an error naming the missing files."""
    try:
        folder = locate(data_dir, SUBDIR, _is_complete, system_dirs=SYSTEM_DIRS, how_to_get=HOW_TO_GET)
    except DataNotFoundError:
        _raise_if_partial(data_dir)  # the more precise message, where there is one
        raise
    if folder is None:
        _raise_if_partial(None)
    return folder


def _check_images(path: Path, images: np.ndarray) -> None:
    """Refuse anything but a non-empty stack of 28×28 uint8 images, naming the file.

    Another size would load and then fail deep inside the model (or, if both splits agree,
    train a model on the wrong data); an empty split would train nothing or test nothing
    and still report an accuracy."""
    if images.ndim == 3 and images.shape[1:] == IMAGE_SIZE and images.shape[0] > 0 and images.dtype == np.uint8:
        return
    found = "×".join(str(d) for d in images.shape) or "a scalar"
    expected = "N×" + "×".join(str(d) for d in IMAGE_SIZE)
    if images.ndim == 3 and images.shape[0] == 0:
        problem = f"holds no images (shape {found}, expected {expected} with N >= 1)"
    elif images.dtype != np.uint8 and images.ndim == 3 and images.shape[1:] == IMAGE_SIZE:
        problem = f"holds {images.dtype} pixels, expected uint8"
    else:
        problem = f"holds images of shape {found}, expected {expected}"
    raise DataCorruptError(f"{path} {problem}: it is not an original Fashion-MNIST file; {REFETCH}")


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
    folder = _find(data_dir)
    if folder is None:
        cached = user_cache_dir() / "FashionMNIST" / "raw"
        folder = cached if cached.is_dir() and _is_complete(cached) else _torchvision_download()
    if folder is None:
        raise not_found("Fashion-MNIST", data_dir, SUBDIR, SYSTEM_DIRS, HOW_TO_GET)
    paths = {key: _file(folder, stem) for key, stem in FILES.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_images(paths[f"{split}_images"], images)
        if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
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
