"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009): 50,000 train / 10,000 test 32×32 colour images.

Read from the official "python version" pickle batches (``cifar-10-batches-py/``,
``cifar-100-python/``), the files torchvision also downloads. The pickles are
read with an unpickler that only rebuilds numpy arrays, so a tampered file
cannot run code. Normalisation and train-time augmentation follow NeuLite's
released code (spec common.md §1.3): ImageNet mean/std, random crop with 4
pixels of padding and a horizontal flip.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedbench.data import ImageDataset, user_cache_dir
from fedbench.datasets.layout import Layout, find
from fedbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from fedbench.errors import DataCorruptError

log = logging.getLogger(__name__)

IMAGE_SHAPE = (3, 32, 32)
CROP_PADDING_PX = 4

# The only globals a CIFAR pickle needs: numpy's array reconstruction (numpy 1 and 2 spellings)
# and the bytes codec that Python 3 pickles of byte strings use.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR batch)")


@dataclass(frozen=True)
class CifarVariant:
    """What differs between CIFAR-10 and CIFAR-100: file names, label key, class count."""

    name: str
    subdir: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    torchvision_class: str


CIFAR10 = CifarVariant(
    name="cifar10",
    subdir="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    torchvision_class="CIFAR10",
)
CIFAR100 = CifarVariant(
    name="cifar100",
    subdir="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    torchvision_class="CIFAR100",
)


def _layout(variant: CifarVariant) -> Layout:
    files = variant.train_files + variant.test_files
    return Layout(
        name=variant.name,
        subdir=variant.subdir,
        variants={"pickle batches": files},
        how_to_get=(
            f"pass --data-dir DIR holding {variant.subdir}/ (files {', '.join(files)}) from "
            "https://www.cs.toronto.edu/~kriz/cifar.html, or go online once so torchvision can download it"
        ),
    )


def read_batch(path: Path, variant: CifarVariant) -> tuple[np.ndarray, np.ndarray]:
    """Images (N×3×32×32 uint8) and labels (N int64) of one pickle batch, checked."""
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataCorruptError(
            f"{path} is not a readable CIFAR pickle batch ({type(exc).__name__}: {exc}); "
            "it may be truncated: delete it and fetch the data set again"
        ) from exc
    if not isinstance(batch, dict):
        raise DataCorruptError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; fetch it again")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or variant.label_key not in batch:
        raise DataCorruptError(
            f"{path} lacks the keys 'data' and '{variant.label_key}' of a {variant.name} batch; "
            "is it the right data set?"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[variant.label_key], dtype=np.int64)
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels or labels.shape != (data.shape[0],):
        raise DataCorruptError(
            f"{path} has data {data.dtype}{list(data.shape)} and {labels.size} labels; "
            f"expected uint8 [N, {pixels}] and N labels; fetch the data set again"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= variant.num_classes):
        raise DataCorruptError(f"{path} has labels outside 0..{variant.num_classes - 1}; is it {variant.name}?")
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _read_split(folder: Path, files: tuple[str, ...], variant: CifarVariant) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(folder / name, variant) for name in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images), torch.from_numpy(labels)


def _torchvision_download(variant: CifarVariant) -> Path | None:
    """Download through torchvision into the user cache; ``None`` when offline."""
    try:
        import torchvision.datasets

        root = user_cache_dir()
        getattr(torchvision.datasets, variant.torchvision_class)(str(root), train=True, download=True)
        return root / variant.subdir
    except Exception as exc:  # any network failure means: not available
        log.info("torchvision download of %s failed: %s", variant.name, exc)
        return None


def _load(variant: CifarVariant, data_dir: str | None) -> ImageDataset:
    folder = find(_layout(variant), data_dir, download=lambda: _torchvision_download(variant))
    train_x, train_y = _read_split(folder, variant.train_files, variant)
    test_x, test_y = _read_split(folder, variant.test_files, variant)
    log.info("%s loaded from %s", variant.name, folder)
    return ImageDataset(
        name=variant.name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=variant.num_classes,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment=RandomCropFlip(CROP_PADDING_PX, IMAGENET_MEAN, IMAGENET_STD),
    )


def load_cifar10(data_dir: str | None = None) -> ImageDataset:
    """CIFAR-10 from ``cifar-10-batches-py/`` (``--data-dir``, ``$FEDBENCH_DATA``, cache, download)."""
    return _load(CIFAR10, data_dir)


def load_cifar100(data_dir: str | None = None) -> ImageDataset:
    """CIFAR-100 (100 fine labels) from ``cifar-100-python/``, searched like CIFAR-10."""
    return _load(CIFAR100, data_dir)
