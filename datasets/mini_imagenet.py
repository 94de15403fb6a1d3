"""Mini-ImageNet (Vinyals et al., 2016; Ravi & Larochelle split): 100 ImageNet classes × 600 images.

The common distribution splits the 100 *classes* into train/val/test CSVs for
few-shot learning. Federated classification (the paper's ViT runs) needs all
100 classes in both sets, so fedbench merges the three files and splits every
class by image: sorted by file name, the last ⌊n/6⌋ images of a class are the
test set (100 of 600), the rest train (500 of 600) — 50,000 train / 10,000
test. Labels are the class ids (wnids) in sorted order. Images are resized to
84×84 (bilinear) where they are not already.

Two layouts are read: ``images/`` + ``train.csv``/``val.csv``/``test.csv``
(columns ``filename,label``), or class folders ``train/<wnid>/``,
``val/<wnid>/``, ``test/<wnid>/``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from fedbench.data import ImageDataset
from fedbench.datasets.images import decoded_dataset, image_files
from fedbench.datasets.layout import Layout, find
from fedbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from fedbench.errors import DataCorruptError, DataNotFoundError

log = logging.getLogger(__name__)

SIZE_PX = 84
EXPECTED_CLASSES = 100
TEST_SHARE_DENOMINATOR = 6  # the last n // 6 images of each class are test: 100 of 600
# CIFAR's 4 px of crop padding on 32 px, scaled to 84 px.
CROP_PADDING_PX = SIZE_PX * 4 // 32
SPLIT_FILES = ("train", "val", "test")
LAYOUT = Layout(
    name="Mini-ImageNet",
    subdir="mini-imagenet",
    variants={
        "CSV": ["images", *(f"{split}.csv" for split in SPLIT_FILES)],
        "class-folder": list(SPLIT_FILES),
    },
    how_to_get=(
        "pass --data-dir DIR holding images/ with train.csv, val.csv, test.csv (Ravi & Larochelle split), "
        "or train/ val/ test/ with one folder of images per class"
    ),
)


def _csv_listing(folder: Path) -> dict[str, list[Path]]:
    """Class id -> image files, from the three CSV files."""
    by_class: dict[str, list[Path]] = {}
    for split in SPLIT_FILES:
        path = folder / f"{split}.csv"
        try:
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataCorruptError(f"{path} cannot be read as CSV ({exc}); fetch the split files again") from exc
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise DataCorruptError(f"{path} must start with the header 'filename,label'; is it a Mini-ImageNet split?")
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != 2 or not row[0].strip() or not row[1].strip():
                raise DataCorruptError(f"{path} line {line} is not 'filename,label' ({row}); the file may be truncated")
            image = folder / "images" / row[0].strip()
            if not image.is_file():
                raise DataNotFoundError(f"{image} (listed in {path.name} line {line}) is missing; restore images/")
            by_class.setdefault(row[1].strip(), []).append(image)
    return by_class


def _folder_listing(folder: Path) -> dict[str, list[Path]]:
    """Class id -> image files, from ``<split>/<class>/`` folders."""
    by_class: dict[str, list[Path]] = {}
    for split in SPLIT_FILES:
        for class_dir in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
            by_class.setdefault(class_dir.name, []).extend(image_files(class_dir))
    return by_class


def _split_by_class(by_class: dict[str, list[Path]]) -> tuple[list[Path], list[int], list[Path], list[int]]:
    train_files: list[Path] = []
    train_labels: list[int] = []
    test_files: list[Path] = []
    test_labels: list[int] = []
    for label, wnid in enumerate(sorted(by_class)):
        files = sorted(by_class[wnid], key=lambda p: p.name)
        cut = len(files) - len(files) // TEST_SHARE_DENOMINATOR
        train_files += files[:cut]
        train_labels += [label] * cut
        test_files += files[cut:]
        test_labels += [label] * (len(files) - cut)
    return train_files, train_labels, test_files, test_labels


def load(data_dir: str | None = None) -> ImageDataset:
    """The 100-class Mini-ImageNet at 84×84, 500 train / 100 test images per class."""
    folder = find(LAYOUT, data_dir)
    layout = LAYOUT.complete_variant(folder)
    by_class = _csv_listing(folder) if layout == "CSV" else _folder_listing(folder)
    if not by_class or not any(by_class.values()):
        raise DataCorruptError(f"{folder} ({layout} layout) lists no images; fetch Mini-ImageNet again")
    if len(by_class) != EXPECTED_CLASSES:
        log.warning("Mini-ImageNet in %s has %d classes, not %d; using them all", folder, len(by_class), EXPECTED_CLASSES)
    train_files, train_labels, test_files, test_labels = _split_by_class(by_class)
    log.info("Mini-ImageNet decoding %d images of %d classes from %s", len(train_files) + len(test_files),
             len(by_class), folder)
    return decoded_dataset(
        "mini-imagenet", (train_files, train_labels), (test_files, test_labels), size_px=SIZE_PX, num_classes=len(by_class), mean=IMAGENET_MEAN,
        std=IMAGENET_STD, augment=RandomCropFlip(CROP_PADDING_PX, IMAGENET_MEAN, IMAGENET_STD),
    )
