"""CINIC-10 (Darlow et al., 2018): CIFAR-10's classes, 32×32 colour, 90,000 images per split.

Read from the official tree ``train/ valid/ test/``, each with one folder of
PNGs per class, or straight from the distributed ``CINIC-10.tar.gz`` (no
extraction needed). When no copy is found, the archive (687,544,992 bytes) is downloaded
once from the University of Edinburgh's DataShare into the user cache and kept only if
its MD5 is the official archive's. ``cinic10`` trains on ``train`` and tests on
``test`` (the data set's suggested equal split); ``cinic10-trainval`` trains on
``train`` + ``valid`` (180,000 images), the authors' second benchmark setting. The
NeuLite paper does not say which of the two it used. CINIC-10 images are CIFAR-sized,
so they get the CIFAR pipeline (spec common.md §1.3).
"""

from __future__ import annotations

import logging
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from fedbench.data import ImageDataset, user_cache_dir
from fedbench.datasets.images import Source, decoded_dataset, image_files
from fedbench.datasets.layout import Layout, download_file, find
from fedbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip
from fedbench.errors import DataCorruptError

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZE_PX = 32
CROP_PADDING_PX = 4
ARCHIVE = "CINIC-10.tar.gz"
SUBDIR = "cinic-10"
# Tried in order; the first whose bytes have ARCHIVE_MD5 is kept. DataShare's direct file
# endpoint, then the link of the official repository's README (github.com/BayesWatch/cinic-10),
# on DataShare's current host. A link that answers with a web page is discarded by its checksum.
DOWNLOAD_URLS = (
    "https://datashare.ed.ac.uk/server/api/core/bitstreams/e8e186cc-2688-48f1-aa5a-3fda1a43f8b6/content",
    "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
)
ARCHIVE_MD5 = "6ee4d0c996905fe93221de577967a372"


def _layout(splits: tuple[str, ...]) -> Layout:
    return Layout(
        name="CINIC-10",
        subdir=SUBDIR,
        variants={
            "class-folder": [f"{split}/{cls}" for split in splits for cls in CLASSES],
            "archive": [ARCHIVE],
        },
        how_to_get=(
            f"pass --data-dir DIR holding {'/ '.join(splits)}/ with one folder of PNGs per class "
            f"(or {ARCHIVE}) from https://datashare.ed.ac.uk/handle/10283/3192"
        ),
    )


def _folder_split(folder: Path, split: str) -> tuple[list[Source], list[int]]:
    sources: list[Source] = []
    labels: list[int] = []
    for label, cls in enumerate(CLASSES):
        files = image_files(folder / split / cls)
        sources.extend(files)
        labels.extend([label] * len(files))
    if not sources:
        raise DataCorruptError(f"{folder / split} holds no PNG files in its class folders; fetch CINIC-10 again")
    return sources, labels


def _archive_splits(archive: Path, splits: tuple[str, ...]) -> dict[str, tuple[list[Source], list[int]]]:
    """Read the PNG members of ``splits`` from the archive in one streaming pass."""
    found: dict[str, list[tuple[int, str, bytes]]] = {split: [] for split in splits}
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                parts = [p for p in PurePosixPath(member.name).parts if p != "."]
                if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(".png"):
                    continue
                split, cls = parts[-3], parts[-2]
                if split in found and cls in CLASSES:
                    payload = tar.extractfile(member).read()
                    found[split].append((CLASSES.index(cls), f"{archive}:{member.name}", payload))
    except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
        raise DataCorruptError(
            f"{archive} cannot be read to the end ({type(exc).__name__}: {exc}); it may be truncated: "
            "delete it and fetch it again"
        ) from exc
    result = {}
    for split, members in found.items():
        if not members:
            raise DataCorruptError(f"{archive} holds no {split}/<class>/*.png members; is it the CINIC-10 archive?")
        members.sort(key=lambda m: (m[0], m[1]))
        result[split] = ([(name, payload) for _, name, payload in members], [label for label, _, _ in members])
    return result


def _download() -> Path | None:
    """The official archive into the user cache (the loader reads it as is); None when no link
    gave a file with the official checksum (offline, a moved link)."""
    folder = user_cache_dir() / SUBDIR
    for url in DOWNLOAD_URLS:
        if download_file(url, folder / ARCHIVE, md5=ARCHIVE_MD5) is not None:
            return folder
    return None


def _load(data_dir: str | None, train_splits: tuple[str, ...], name: str) -> ImageDataset:
    layout = _layout(train_splits + ("test",))
    folder = find(layout, data_dir, download=_download)
    splits = train_splits + ("test",)
    if layout.complete_variant(folder) == "class-folder":
        read = {split: _folder_split(folder, split) for split in splits}
    else:
        read = _archive_splits(folder / ARCHIVE, splits)
    train_sources = [s for split in train_splits for s in read[split][0]]
    train_labels = [y for split in train_splits for y in read[split][1]]
    test_sources, test_labels = read["test"]
    log.info("CINIC-10 decoding %d train and %d test images from %s", len(train_sources), len(test_sources), folder)
    return decoded_dataset(
        name, (train_sources, train_labels), (test_sources, test_labels), size_px=SIZE_PX, num_classes=len(CLASSES), mean=IMAGENET_MEAN,
        std=IMAGENET_STD, augment=RandomCropFlip(CROP_PADDING_PX, IMAGENET_MEAN, IMAGENET_STD),
    )


def load(data_dir: str | None = None) -> ImageDataset:
    """CINIC-10, trained on ``train`` (90,000 images) and tested on ``test`` (90,000)."""
    return _load(data_dir, ("train",), "cinic10")


def load_trainval(data_dir: str | None = None) -> ImageDataset:
    """CINIC-10 trained on ``train`` + ``valid`` (180,000 images), tested on ``test``."""
    return _load(data_dir, ("train", "valid"), "cinic10-trainval")
