"""Data set loaders, fed tiny copies generated in the real on-disk formats (never a mocked loader)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import pickle
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedbench.data import ImageDataset
from fedbench.datasets import cifar, cinic10, fashion_mnist, femnist, mini_imagenet
from fedbench.datasets.idx import write_idx
from fedbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomCropFlip, pixel_mean_std
from fedbench.errors import DataCorruptError, DataNotFoundError


@pytest.fixture(autouse=True)
def hermetic_search(tmp_path, monkeypatch):
    """No $FEDBENCH_DATA and an empty user cache: only the folders a test names are found."""
    monkeypatch.delenv("FEDBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))


# ------------------------------------------------------------------ generators (real formats)
def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _py2_pickle(value: object) -> bytes:
    """``value`` pickled as Python 2's cPickle (protocol 2) wrote the official CIFAR batches: byte
    strings as ``str`` (BINSTRING opcodes, read back as bytes with ``encoding="bytes"``), arrays
    through ``numpy.core.multiarray._reconstruct`` with a numpy-1 dtype state. Python 3's pickle
    writes bytes through ``_codecs.encode`` and numpy 2 arrays through ``numpy._core``, so a
    generator built on it would not exercise the path the real files take."""

    def text(raw: bytes) -> bytes:
        return b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw

    def integer(number: int) -> bytes:
        if 0 <= number < 256:
            return b"K" + bytes([number])
        if 0 <= number < 65536:
            return b"M" + struct.pack("<H", number)
        return b"J" + struct.pack("<i", number)

    def body(item: object) -> bytes:
        if isinstance(item, bytes):
            return text(item)
        if isinstance(item, int):
            return integer(item)
        if isinstance(item, list):
            return b"](" + b"".join(body(x) for x in item) + b"e"
        if isinstance(item, dict):
            return b"}(" + b"".join(body(k) + body(v) for k, v in item.items()) + b"u"
        array = np.ascontiguousarray(item, dtype=np.uint8)
        dtype = (b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R("
                 + integer(3) + text(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb")
        return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
                + b"\x87R(" + integer(1) + b"(" + b"".join(integer(d) for d in array.shape) + b"t" + dtype
                + b"\x89" + text(array.tobytes()) + b"tb")

    return b"\x80\x02" + body(value) + b"."


def write_cifar_batch(
    path: Path, images: np.ndarray, labels: dict[bytes, list[int]], *, python2: bool = True
) -> None:
    """A batch as the official python version stores it: a dict with byte-string keys, rows of
    3072 bytes (1024 R, 1024 G, 1024 B, each row-major), labels as lists of ints; pickled as the
    real files were (Python 2), or by Python 3's pickle with ``python2=False``."""
    batch = {
        b"data": images.reshape(images.shape[0], -1),
        **{key: [int(v) for v in values] for key, values in labels.items()},
        b"batch_label": path.name.encode(),
        b"filenames": [f"img_{i}.png".encode() for i in range(images.shape[0])],
    }
    if python2:
        path.write_bytes(_py2_pickle(batch))
    else:
        with path.open("wb") as handle:
            pickle.dump(batch, handle, protocol=2)


def make_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images, labels = _images(rng, per_batch, (3, 32, 32)), rng.integers(0, 10, per_batch)
        write_cifar_batch(folder / name, images, {b"labels": labels.tolist()})
        written[name] = (images, labels)
    return written


def make_cifar100(root: Path, n: int = 6, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        images, labels = _images(rng, n, (3, 32, 32)), rng.integers(0, 100, n)
        coarse = (labels // 5).tolist()  # the real files hold both; fedbench reads the fine ones
        write_cifar_batch(folder / name, images, {b"fine_labels": labels.tolist(), b"coarse_labels": coarse})
        written[name] = (images, labels)
    return written


def _png_bytes(array_hwc: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array_hwc).save(buffer, format="PNG")
    return buffer.getvalue()


def make_cinic(root: Path, per_class: int = 2, seed: int = 0) -> dict[tuple[str, str], list[np.ndarray]]:
    """The official tree: <split>/<class>/<name>.png, 32×32 RGB."""
    rng = np.random.default_rng(seed)
    written: dict[tuple[str, str], list[np.ndarray]] = {}
    for split in ("train", "valid", "test"):
        for cls in cinic10.CLASSES:
            folder = root / "cinic-10" / split / cls
            folder.mkdir(parents=True)
            images = [_images(rng, 1, (32, 32, 3))[0] for _ in range(per_class)]
            for i, image in enumerate(images):
                (folder / f"cifar10-{split}-{i}.png").write_bytes(_png_bytes(image))
            written[split, cls] = images
    return written


def make_cinic_archive(root: Path, tree: Path) -> Path:
    """``CINIC-10.tar.gz`` with members ./train/<class>/*.png, as the official archive."""
    folder = root / "cinic-archive"
    folder.mkdir(parents=True)
    with tarfile.open(folder / cinic10.ARCHIVE, "w:gz") as tar:
        for path in sorted(tree.rglob("*.png")):
            tar.add(path, arcname="./" + path.relative_to(tree).as_posix())
    return folder


def _leaf_character(rng: np.random.Generator) -> list[float]:
    """One image as LEAF's data_to_json.py stores it: the NIST scan (dark ink on white) as 8-bit
    grey, 28×28, flattened and divided by 255, so 1.0 is the white background and ink is near 0."""
    image = np.full((28, 28), 255, dtype=np.uint8)
    top, left = rng.integers(4, 12, size=2)
    image[top : top + 12, left : left + 3] = rng.integers(0, 60, size=(12, 3))  # a stroke
    image[top : top + 12, left + 3] = rng.integers(60, 255, size=12)  # its anti-aliased edge
    return (image.flatten() / 255).tolist()


def make_femnist(root: Path, samples_per_writer: tuple[int, ...] = (3, 5, 2), seed: int = 0) -> dict:
    """LEAF's JSON shards as ``preprocess.sh ... -t sample`` writes them: train/ and test/ with the
    same users, num_samples, user_data (x: 784 floats in [0, 1], 1.0 = white background; y: 0..61).
    Like LEAF's split_data.py, user_data also holds an empty entry for a writer it dropped from
    ``users`` (fewer than 2 samples)."""
    rng = np.random.default_rng(seed)
    users = [f"f{index:04d}_{index + 10:02d}" for index in range(len(samples_per_writer))]
    written = {}
    for split, counts in (("train", samples_per_writer), ("test", tuple(1 for _ in samples_per_writer))):
        (root / "femnist" / split).mkdir(parents=True)
        user_data = {}
        for user, count in zip(users, counts, strict=True):
            pixels = [_leaf_character(rng) for _ in range(count)]
            user_data[user] = {"x": pixels, "y": rng.integers(0, 62, count).tolist()}
        user_data["f3999_01"] = {"x": [], "y": []}  # dropped by the split, listed in no 'users'
        shard = {"users": users, "num_samples": list(counts), "user_data": user_data}
        (root / "femnist" / split / f"all_data_0_niid_05_keep_0_{split}_9.json").write_text(json.dumps(shard))
        written[split] = shard
    return written


def make_mini_imagenet_csv(root: Path, classes: int = 3, per_class: int = 6, seed: int = 0) -> Path:
    """images/ + train.csv/val.csv/test.csv (filename,label); classes spread over the three files."""
    rng = np.random.default_rng(seed)
    folder = root / "mini-imagenet"
    (folder / "images").mkdir(parents=True)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for c in range(classes):
        wnid = f"n{1000 + c:08d}"
        for i in range(per_class):
            name = f"{wnid}{i:08d}.jpg"
            Image.fromarray(_images(rng, 1, (60, 90, 3))[0]).save(folder / "images" / name, format="JPEG")
            rows[("train", "val", "test")[c % 3]].append((name, wnid))
    for split, entries in rows.items():
        with (folder / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            writer.writerows(entries)
    return folder


def make_mini_imagenet_folders(csv_folder: Path, root: Path) -> Path:
    """The same images as class folders <split>/<wnid>/*.jpg."""
    folder = root / "mini-imagenet-folders"
    for split in ("train", "val", "test"):
        (folder / split).mkdir(parents=True)
        with (csv_folder / f"{split}.csv").open() as handle:
            for row in list(csv.reader(handle))[1:]:
                (folder / split / row[1]).mkdir(exist_ok=True)
                (folder / split / row[1] / row[0]).write_bytes((csv_folder / "images" / row[0]).read_bytes())
    return folder


def make_fashion_mnist(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", _images(rng, n_train, (28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, n_train).astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", _images(rng, n_test, (28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, n_test).astype(np.uint8))
    return folder


def _truncate(path: Path, keep_fraction: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep_fraction)])


# ------------------------------------------------------------------ CIFAR
def test_cifar10_loads_every_pickle_batch_pixel_exact(tmp_path):
    written = make_cifar10(tmp_path)
    data = cifar.load_cifar10(str(tmp_path))
    train_images = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (20, 3, 32, 32)
    assert np.array_equal(data.train_images.numpy(), train_images)
    assert np.array_equal(data.test_labels.numpy(), written["test_batch"][1])
    assert data.num_classes == 10 and tuple(data.mean) == IMAGENET_MEAN and tuple(data.std) == IMAGENET_STD
    assert isinstance(data.augment, RandomCropFlip) and data.augment.padding_px == 4


def test_cifar100_reads_the_fine_labels(tmp_path):
    written = make_cifar100(tmp_path)
    data = cifar.load_cifar100(str(tmp_path / "cifar-100-python"))
    assert data.num_classes == 100
    assert np.array_equal(data.train_labels.numpy(), written["train"][1])
    assert np.array_equal(data.test_images.numpy(), written["test"][0])


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_batches_in_the_python2_format_load_as_torchvision_reads_them(tmp_path, monkeypatch, variant):
    """The generated files are the real ones' layout (cPickle protocol 2, numpy.core globals, str
    payloads): torchvision's own CIFAR reader gives the same pixels (HWC there, CHW here) and labels."""
    torchvision = pytest.importorskip("torchvision")
    make = make_cifar10 if variant == "cifar10" else make_cifar100
    make(tmp_path)
    folder = tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    raw = (folder / ("test_batch" if variant == "cifar10" else "test")).read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw and b"numpy._core" not in raw
    reference_class = getattr(torchvision.datasets, variant.upper())
    monkeypatch.setattr(reference_class, "_check_integrity", lambda self: True)  # generated, not the real md5s
    monkeypatch.setattr(reference_class, "_load_meta", lambda self: None)  # batches.meta/meta: not read by fedbench
    data = (cifar.load_cifar10 if variant == "cifar10" else cifar.load_cifar100)(str(tmp_path))
    for train, images, labels in ((True, data.train_images, data.train_labels),
                                  (False, data.test_images, data.test_labels)):
        reference = reference_class(str(tmp_path), train=train)
        assert np.array_equal(images.numpy(), reference.data.transpose(0, 3, 1, 2))
        assert labels.tolist() == list(reference.targets)


def test_cifar_batches_pickled_by_python3_load_too(tmp_path):
    """A copy re-pickled by Python 3 (bytes through _codecs.encode, numpy._core globals) is read alike."""
    written = make_cifar10(tmp_path)
    for name, (images, labels) in written.items():
        write_cifar_batch(tmp_path / "cifar-10-batches-py" / name, images, {b"labels": labels.tolist()},
                          python2=False)
    data = cifar.load_cifar10(str(tmp_path))
    assert np.array_equal(data.test_images.numpy(), written["test_batch"][0])
    assert np.array_equal(data.test_labels.numpy(), written["test_batch"][1])


def test_cifar10_is_found_under_fedbench_data(tmp_path, monkeypatch):
    make_cifar10(tmp_path / "store")
    monkeypatch.setenv("FEDBENCH_DATA", str(tmp_path / "store"))
    assert cifar.load_cifar10(None).num_train == 20


def test_truncated_cifar_pickle_is_a_one_line_error_naming_the_file(tmp_path):
    make_cifar10(tmp_path)
    _truncate(tmp_path / "cifar-10-batches-py" / "data_batch_2")
    with pytest.raises(DataCorruptError, match=r"data_batch_2 is not a readable CIFAR pickle batch") as caught:
        cifar.load_cifar10(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_cifar_folder_missing_a_batch_names_the_missing_file(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match=r"incomplete: missing data_batch_3 \(the pickle batches layout"):
        cifar.load_cifar10(str(tmp_path))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": print}))
    with pytest.raises(DataCorruptError, match=r"refusing to load builtins.print"):
        cifar.load_cifar100(str(tmp_path))


# ------------------------------------------------------------------ CINIC-10
def test_cinic10_reads_the_class_folder_tree_in_class_order(tmp_path):
    written = make_cinic(tmp_path, per_class=2)
    data = cinic10.load(str(tmp_path))
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (20, 3, 32, 32)
    assert data.train_labels.tolist() == [label for label in range(10) for _ in range(2)]
    expected_first = written["train", "airplane"][0].transpose(2, 0, 1)
    assert np.array_equal(data.train_images[0].numpy(), expected_first)
    trainval = cinic10.load_trainval(str(tmp_path))
    assert trainval.num_train == 40 and trainval.name == "cinic10-trainval"


def test_cinic10_archive_gives_the_same_tensors_as_the_tree(tmp_path):
    make_cinic(tmp_path, per_class=1)
    archive_dir = make_cinic_archive(tmp_path, tmp_path / "cinic-10")
    from_tree, from_archive = cinic10.load(str(tmp_path)), cinic10.load(str(archive_dir))
    assert torch.equal(from_tree.train_images, from_archive.train_images)
    assert torch.equal(from_tree.test_labels, from_archive.test_labels)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_cinic10_is_downloaded_once_into_the_cache_when_no_copy_is_found(tmp_path, monkeypatch):
    make_cinic(tmp_path, per_class=1)
    archive = make_cinic_archive(tmp_path, tmp_path / "cinic-10") / cinic10.ARCHIVE
    monkeypatch.setattr(cinic10, "DOWNLOAD_URLS", (archive.as_uri(),))
    monkeypatch.setattr(cinic10, "ARCHIVE_MD5", _md5(archive))
    downloaded = cinic10.load()
    cached = tmp_path / "empty-cache" / "fedbench" / "data" / "cinic-10" / cinic10.ARCHIVE
    assert cached.read_bytes() == archive.read_bytes()
    assert downloaded.num_train == 10 and not list(cached.parent.glob("*.part"))
    monkeypatch.setattr(cinic10, "DOWNLOAD_URLS", ((tmp_path / "gone.tar.gz").as_uri(),))
    assert torch.equal(cinic10.load().train_images, downloaded.train_images)  # the cached copy, no download


def test_a_failed_cinic10_download_leaves_nothing_behind_and_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(cinic10, "DOWNLOAD_URLS", ((tmp_path / "offline.tar.gz").as_uri(),))
    with pytest.raises(DataNotFoundError, match="datashare.ed.ac.uk") as info:
        cinic10.load()
    assert "\n" not in str(info.value)
    cache = tmp_path / "empty-cache" / "fedbench" / "data" / "cinic-10"
    assert not cache.exists() or not list(cache.iterdir())  # no .part a later search could mistake


def test_the_cinic10_links_and_checksum_are_the_official_archives():
    """DataShare's file endpoint for the archive, the README's link, and the archive's MD5."""
    assert cinic10.DOWNLOAD_URLS == (
        "https://datashare.ed.ac.uk/server/api/core/bitstreams/e8e186cc-2688-48f1-aa5a-3fda1a43f8b6/content",
        "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz",
    )
    assert cinic10.ARCHIVE_MD5 == "6ee4d0c996905fe93221de577967a372"


@pytest.mark.parametrize("body", [b"", b"<html><head><title>DataShare</title></head></html>"], ids=["empty", "html"])
def test_a_cinic10_download_that_is_not_the_official_archive_is_not_cached(tmp_path, monkeypatch, body):
    """A moved link may answer HTTP 200 with a web page, or with no body (BayesWatch/cinic-10#2).
    Cached, such a file was read on every later run ("not a gzip file ... fetch it again") and no
    download was tried again; now it is discarded and the next link is tried."""
    page = tmp_path / "served"
    page.write_bytes(body)
    monkeypatch.setattr(cinic10, "DOWNLOAD_URLS", (page.as_uri(),))
    with pytest.raises(DataNotFoundError, match="datashare.ed.ac.uk") as info:
        cinic10.load()
    assert "\n" not in str(info.value)
    cache = tmp_path / "empty-cache" / "fedbench" / "data" / "cinic-10"
    assert not cache.exists() or not list(cache.iterdir())
    make_cinic(tmp_path, per_class=1)
    archive = make_cinic_archive(tmp_path, tmp_path / "cinic-10") / cinic10.ARCHIVE
    monkeypatch.setattr(cinic10, "DOWNLOAD_URLS", (page.as_uri(), archive.as_uri()))
    monkeypatch.setattr(cinic10, "ARCHIVE_MD5", _md5(archive))
    assert cinic10.load().num_train == 10
    assert (cache / cinic10.ARCHIVE).read_bytes() == archive.read_bytes()


def test_truncated_cinic_png_is_a_one_line_error_naming_the_file(tmp_path):
    make_cinic(tmp_path, per_class=1)
    broken = tmp_path / "cinic-10" / "test" / "frog" / "cifar10-test-0.png"
    _truncate(broken)
    with pytest.raises(DataCorruptError, match=r"cifar10-test-0.png cannot be decoded") as caught:
        cinic10.load(str(tmp_path))
    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)


def test_truncated_cinic_archive_names_the_archive(tmp_path):
    make_cinic(tmp_path, per_class=1)
    archive_dir = make_cinic_archive(tmp_path, tmp_path / "cinic-10")
    _truncate(archive_dir / cinic10.ARCHIVE, 0.6)
    with pytest.raises(DataCorruptError, match=r"CINIC-10.tar.gz cannot be read to the end"):
        cinic10.load(str(archive_dir))


def test_cinic_tree_without_a_class_folder_names_it(tmp_path):
    make_cinic(tmp_path, per_class=1)
    for png in (tmp_path / "cinic-10" / "test" / "truck").iterdir():
        png.unlink()
    (tmp_path / "cinic-10" / "test" / "truck").rmdir()
    with pytest.raises(DataNotFoundError, match=r"missing test/truck \(the class-folder layout"):
        cinic10.load(str(tmp_path))


# ------------------------------------------------------------------ FEMNIST
def test_femnist_keeps_the_writer_of_every_training_sample(tmp_path):
    written = make_femnist(tmp_path, samples_per_writer=(3, 5, 2))
    data = femnist.load(str(tmp_path))
    assert data.train_images.shape == (10, 1, 28, 28) and data.num_classes == 62
    assert data.train_writers.tolist() == [0] * 3 + [1] * 5 + [2] * 2
    first_user = written["train"]["users"][0]
    pixels = np.rint(np.asarray(written["train"]["user_data"][first_user]["x"]) * 255).astype(np.uint8)
    assert np.array_equal(data.train_images[:3].reshape(3, -1).numpy(), pixels)
    assert data.test_labels.shape == (3,)
    mean, std = pixel_mean_std(data.train_images)
    assert tuple(data.mean) == mean and tuple(data.std) == std


def test_femnist_keeps_leafs_polarity_white_background_dark_ink(tmp_path):
    """LEAF stores x = grey/255 of the NIST scans, so the background is 1.0 (white), unlike MNIST's
    0; fedbench keeps that (uint8 255 background) and normalises with the training set's own mean
    and std, under which the background is a small positive value and ink strongly negative."""
    written = make_femnist(tmp_path, samples_per_writer=(3, 5, 2))
    data = femnist.load(str(tmp_path))
    images = data.train_images[:, 0]
    assert images[:, 0, 0].tolist() == [255] * 10 and images[:, 27, 27].tolist() == [255] * 10
    assert int(images.min()) < 60 and data.mean[0] > 0.5
    normalised = data.normalize(data.train_images)
    assert float(normalised[:, 0, 0, 0].min()) > 0 > float(normalised.min())
    assert "f3999_01" not in written["train"]["users"] and data.num_train == 10  # user_data's extra entry


def test_femnist_accepts_leafs_data_folder(tmp_path):
    make_femnist(tmp_path)
    (tmp_path / "femnist").rename(tmp_path / "data")
    (tmp_path / "leaf-femnist").mkdir()
    (tmp_path / "data").rename(tmp_path / "leaf-femnist" / "data")
    assert femnist.load(str(tmp_path / "leaf-femnist")).num_train == 10


def test_truncated_femnist_json_is_a_one_line_error_naming_the_file(tmp_path):
    make_femnist(tmp_path)
    shard = next((tmp_path / "femnist" / "train").glob("*.json"))
    _truncate(shard)
    with pytest.raises(DataCorruptError, match=r"_train_9.json is not readable JSON") as caught:
        femnist.load(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_femnist_without_a_test_folder_names_it(tmp_path):
    make_femnist(tmp_path)
    for shard in (tmp_path / "femnist" / "test").iterdir():
        shard.unlink()
    (tmp_path / "femnist" / "test").rmdir()
    with pytest.raises(DataNotFoundError, match=r"incomplete: missing test \(the LEAF layout expects train, test\)"):
        femnist.load(str(tmp_path))


def test_femnist_shard_with_mismatched_counts_is_rejected(tmp_path):
    make_femnist(tmp_path)
    path = next((tmp_path / "femnist" / "train").glob("*.json"))
    shard = json.loads(path.read_text())
    shard["num_samples"][0] += 1
    path.write_text(json.dumps(shard))
    with pytest.raises(DataCorruptError, match=r"has 3 images, 3 labels and num_samples 4"):
        femnist.load(str(tmp_path))


# ------------------------------------------------------------------ Mini-ImageNet
def test_mini_imagenet_merges_the_csv_splits_and_holds_out_a_sixth_of_each_class(tmp_path):
    make_mini_imagenet_csv(tmp_path, classes=3, per_class=6)
    data = mini_imagenet.load(str(tmp_path))
    assert data.train_images.shape == (15, 3, 84, 84) and data.test_images.shape == (3, 3, 84, 84)
    assert data.num_classes == 3
    assert data.train_labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 and data.test_labels.tolist() == [0, 1, 2]
    assert data.augment.padding_px == 10


def test_mini_imagenet_class_folders_give_the_same_tensors_as_the_csv_layout(tmp_path):
    csv_folder = make_mini_imagenet_csv(tmp_path, classes=3, per_class=6)
    folders = make_mini_imagenet_folders(csv_folder, tmp_path)
    from_csv, from_folders = mini_imagenet.load(str(csv_folder)), mini_imagenet.load(str(folders))
    assert torch.equal(from_csv.train_images, from_folders.train_images)
    assert torch.equal(from_csv.test_labels, from_folders.test_labels)


def test_mini_imagenet_image_missing_from_images_is_named(tmp_path):
    folder = make_mini_imagenet_csv(tmp_path)
    victim = sorted((folder / "images").iterdir())[4]
    victim.unlink()
    with pytest.raises(DataNotFoundError, match=rf"{victim.name} \(listed in train.csv line 6\) is missing"):
        mini_imagenet.load(str(tmp_path))


def test_mini_imagenet_truncated_csv_line_is_named(tmp_path):
    folder = make_mini_imagenet_csv(tmp_path)
    text = (folder / "val.csv").read_text()
    (folder / "val.csv").write_text(text[: text.rindex(",")])
    with pytest.raises(DataCorruptError, match=r"val.csv line 7 is not 'filename,label'"):
        mini_imagenet.load(str(tmp_path))


# ------------------------------------------------------------------ every loader
@pytest.mark.parametrize(
    "loader",
    [cifar.load_cifar10, cifar.load_cifar100, cinic10.load, femnist.load, mini_imagenet.load, fashion_mnist.load],
    ids=["cifar10", "cifar100", "cinic10", "femnist", "mini-imagenet", "fashion-mnist"],
)
def test_a_missing_data_dir_is_a_one_line_error(loader, tmp_path):
    with pytest.raises(DataNotFoundError, match=r"--data-dir .*nowhere does not exist") as caught:
        loader(str(tmp_path / "nowhere"))
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------ Fashion-MNIST errors
def test_fashion_mnist_reads_a_generated_idx_copy(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    data = fashion_mnist.load(str(folder))
    assert data.train_images.shape == (12, 1, 28, 28) and data.test_labels.shape == (4,)


def test_truncated_fashion_mnist_idx_file_is_named(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    _truncate(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataCorruptError, match=r"train-images-idx3-ubyte.gz cannot be read") as caught:
        fashion_mnist.load(str(folder))
    assert "\n" not in str(caught.value)


def test_fashion_mnist_idx_with_a_short_payload_is_named(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(4, dtype=np.uint8), compress=False)
    path.rename(folder / "t10k-labels-idx1-ubyte")
    raw = (folder / "t10k-labels-idx1-ubyte").read_bytes()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(raw[:-2])
    with pytest.raises(DataCorruptError, match=r"t10k-labels-idx1-ubyte is truncated or padded"):
        fashion_mnist.load(str(folder))


def test_fashion_mnist_images_and_labels_that_disagree_are_rejected(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataCorruptError, match=r"Fashion-MNIST train files in .* disagree"):
        fashion_mnist.load(str(folder))


@pytest.mark.parametrize("wrong_splits", [("train", "t10k"), ("train",), ("t10k",)], ids=["both", "train", "test"])
def test_fashion_mnist_images_that_are_not_28x28_are_named_with_their_shape(tmp_path, wrong_splits):
    folder = make_fashion_mnist(tmp_path)
    rng = np.random.default_rng(1)
    for split in wrong_splits:
        n = 12 if split == "train" else 4
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", _images(rng, n, (14, 56)))
    first = wrong_splits[0]
    expected = rf"{first}-images-idx3-ubyte.gz holds images of shape {12 if first == 'train' else 4}×14×56, expected N×28×28"
    with pytest.raises(DataCorruptError, match=expected + r".*fetch the data set again, or point --data-dir") as caught:
        fashion_mnist.load(str(folder))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_an_empty_fashion_mnist_split_is_rejected(tmp_path, split):
    folder = make_fashion_mnist(tmp_path)
    write_idx(folder / f"{split}-images-idx3-ubyte.gz", np.zeros((0, 28, 28), dtype=np.uint8))
    write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.zeros(0, dtype=np.uint8))
    with pytest.raises(DataCorruptError, match=rf"{split}-images-idx3-ubyte.gz holds no images \(shape 0×28×28"):
        fashion_mnist.load(str(folder))


def test_a_fashion_mnist_folder_missing_a_file_names_it(tmp_path, monkeypatch):
    folder = make_fashion_mnist(tmp_path)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    named = r"Fashion-MNIST in .*fashion-mnist is incomplete: missing t10k-labels-idx1-ubyte\[.gz\]; restore"
    for data_dir in (str(folder), str(tmp_path)):  # the copy itself, or its parent
        with pytest.raises(DataNotFoundError, match=named):
            fashion_mnist.load(data_dir)
    # Searched without --data-dir and no complete copy anywhere: named before any download is tried.
    monkeypatch.setenv("FEDBENCH_DATA", str(tmp_path))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setattr(fashion_mnist, "_torchvision_download", lambda: pytest.fail("downloaded over a partial copy"))
    with pytest.raises(DataNotFoundError, match=named):
        fashion_mnist.load()


def test_fashion_mnist_files_may_mix_gzip_and_plain(tmp_path):
    folder = make_fashion_mnist(tmp_path)
    packed = folder / "t10k-labels-idx1-ubyte.gz"
    (folder / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(packed.read_bytes()))
    packed.unlink()
    assert fashion_mnist.load(str(folder)).test_labels.shape == (4,)


# ------------------------------------------------------------------ augmentation
def _crops(image: torch.Tensor, fill: torch.Tensor, pad: int) -> list[torch.Tensor]:
    c, h, w = image.shape
    padded = fill.view(c, 1, 1).expand(c, h + 2 * pad, w + 2 * pad).clone()
    padded[:, pad : pad + h, pad : pad + w] = image
    views = [padded[:, top : top + h, left : left + w] for top in range(2 * pad + 1) for left in range(2 * pad + 1)]
    return views + [v.flip(2) for v in views]


def test_random_crop_flip_is_a_padded_crop_or_its_mirror_and_depends_on_the_generator_only():
    augment = RandomCropFlip(2, IMAGENET_MEAN, IMAGENET_STD)
    images = torch.randn(16, 3, 6, 6)
    first = augment(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(6)))
    fill = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    chosen = []
    for image, out in zip(images, first, strict=True):
        crops = _crops(image, fill, 2)
        chosen.append(next(i for i, crop in enumerate(crops) if torch.equal(out, crop)))
    mirrored = [i >= len(crops) // 2 for i in chosen]
    assert any(mirrored) and not all(mirrored)
    assert len(set(chosen)) > 1


def test_random_crop_padding_is_a_black_pixel_after_normalisation():
    augment = RandomCropFlip(4, IMAGENET_MEAN, IMAGENET_STD, flip_probability=0.0)
    generator = torch.Generator().manual_seed(0)
    black = torch.zeros(64, 3, 8, 8)  # normalised black is -mean/std, which the padding must equal
    normalised = (black - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = augment(normalised, generator)
    torch.testing.assert_close(out, normalised)


def test_pixel_mean_std_matches_a_direct_computation():
    images = torch.randint(0, 256, (50, 2, 5, 5), dtype=torch.uint8)
    mean, std = pixel_mean_std(images, chunk_images=7)
    as_float = images.double() / 255
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), as_float.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), as_float.std(dim=(0, 2, 3), unbiased=False))


def _tiny_augmented_set(augment) -> ImageDataset:
    images = torch.randint(0, 256, (23, 3, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(23) % 10
    return ImageDataset("tiny", images, labels, images[:4], labels[:4], 10, IMAGENET_MEAN, IMAGENET_STD,
                        augment=augment)


@pytest.mark.parametrize("drawn_ahead", [True, False])
@pytest.mark.parametrize("batch_size", [5, 11, 22])  # last batches of 3, 1 (left out) and 1
def test_a_pass_makes_the_batches_per_batch_calls_make_and_leaves_the_generator_as_they_do(drawn_ahead, batch_size):
    """training_batches draws a pass's augmentation up front (one copy to a GPU): the same crops and
    flips, batch for batch, as drawing per batch, and the generator ends in the same state.
    An augmentation without draw/apply (a plain callable) is called per batch."""
    crop_flip = RandomCropFlip(2, IMAGENET_MEAN, IMAGENET_STD)
    dataset = _tiny_augmented_set(crop_flip if drawn_ahead else lambda images, g: crop_flip(images, g))
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    ahead, per_batch = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    batches = list(dataset.training_batches(order, batch_size, ahead))
    expected = [dataset.train_batch(order[s : s + batch_size], per_batch) for s in range(0, 23, batch_size)
                if len(order[s : s + batch_size]) >= 2]
    assert len(batches) == len(expected) == 23 // batch_size + (23 % batch_size >= 2)
    for (images, labels), (want_images, want_labels) in zip(batches, expected, strict=True):
        assert torch.equal(images, want_images) and torch.equal(labels, want_labels)
    assert torch.equal(ahead.get_state(), per_batch.get_state())
    plain = list(dataset.training_batches(order, batch_size))  # no generator: normalised, not augmented
    assert torch.equal(plain[0][0], dataset.normalize(dataset.train_images[order[:batch_size]]))


@pytest.mark.parametrize("change, message", [
    (lambda x, y: (x.float(), y), "train images are torch.float32 of shape [4, 1, 4, 4]; a data set must give uint8"),
    (lambda x, y: (x[:, 0], y), "a data set must give uint8 pixels (0-255) shaped N x C x H x W"),
    (lambda x, y: (x, y[:3]), "4 train images but labels of shape [3]; give one label per image"),
])
def test_a_data_set_with_float_or_mis_shaped_images_is_refused_in_one_line(change, message):
    """Batches are normalised as 0-255 pixels into new float tensors; float pixels would train on
    wrong inputs (and a view of them be normalised in place) without an error."""
    images, labels = torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    bad_images, bad_labels = change(images, labels)
    with pytest.raises(DataCorruptError, match=re.escape(message)):
        ImageDataset("mine", bad_images, bad_labels, images, labels, 10, [0.5], [0.25])
    with pytest.raises(DataCorruptError, match="both splits must share C x H x W"):
        ImageDataset("mine", images, labels, torch.zeros(4, 1, 5, 5, dtype=torch.uint8), labels, 10, [0.5], [0.25])
