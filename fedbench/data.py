"""The data path: one set of tensors per run, clients as index arrays into it.

A data set is loaded once as ``uint8`` images; a client's shard is an index
array; a batch is made by tensor indexing and normalised on the fly. Nothing is
copied per client, so the memory of a run grows with the number of clients only
by their index arrays, and there is no per-client ``DataLoader``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from fedbench.config import MIN_TRAIN_BATCH
from fedbench.errors import DataCorruptError, DataNotFoundError

# A batch augmentation: (float images N×C×H×W, generator) -> augmented images.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@runtime_checkable
class DrawnAugment(Protocol):
    """An augmentation whose random choices can be drawn ahead of the images they apply to
    (:class:`fedbench.datasets.transforms.RandomCropFlip`). ``draw(n, generator)`` returns the
    choices for ``n`` images as a tensor whose last dimension is the image; drawing for several
    batches one after the other must consume ``generator`` as the batches' own calls would."""

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor: ...


def training_batch_sizes(num: int, batch_size: int) -> list[int]:
    """The batch sizes of one local epoch over ``num`` samples: full batches, then the rest,
    unless that is a single sample (``MIN_TRAIN_BATCH``: BatchNorm cannot train on it)."""
    sizes = (min(batch_size, num - start) for start in range(0, num, batch_size))
    return [n for n in sizes if n >= MIN_TRAIN_BATCH]


@dataclass(eq=False)
class ImageDataset:
    """Train and test images of one data set, as loaded from disk.

    ``train_writers`` is set where the data has a natural owner per sample
    (FEMNIST writers); the ``natural`` partitioner uses it.
    """

    name: str
    train_images: torch.Tensor  # uint8, N×C×H×W
    train_labels: torch.Tensor  # int64, N
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: Sequence[float]
    std: Sequence[float]
    augment: Augment | None = None
    train_writers: np.ndarray | None = None
    _scale: torch.Tensor = field(init=False, repr=False)
    _shift: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_layout()
        channels = self.train_images.shape[1]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, channels, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, channels, 1, 1)
        # x_norm = (x / 255 - mean) / std = x * scale + shift, one fused pass per batch.
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    def _check_layout(self) -> None:
        """Batches are normalised as 0–255 pixels (into a new float tensor), so a data set that
        hands over float or mis-shaped images would train on wrong inputs without an error."""
        for split, images, labels in (("train", self.train_images, self.train_labels),
                                      ("test", self.test_images, self.test_labels)):
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DataCorruptError(
                    f"data set {self.name!r}: {split} images are {images.dtype} of shape {list(images.shape)}; "
                    f"a data set must give uint8 pixels (0-255) shaped N x C x H x W")
            if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
                raise DataCorruptError(
                    f"data set {self.name!r}: {images.shape[0]} {split} images but labels of shape "
                    f"{list(labels.shape)}; give one label per image")
        if self.test_images.shape[1:] != self.train_images.shape[1:]:
            raise DataCorruptError(
                f"data set {self.name!r}: test images are {list(self.test_images.shape[1:])}, train images "
                f"{list(self.train_images.shape[1:])}; both splits must share C x H x W")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the images are, hence where batches are made."""
        return self.train_images.device

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same data set with its tensors on ``device`` (itself if already there).

        On a GPU the whole set is held as uint8, so a batch is indexed, normalised and
        augmented there, and nothing crosses the bus per batch but its random draws."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = dataclasses.replace(
            self,
            train_images=self.train_images.to(device), train_labels=self.train_labels.to(device),
            test_images=self.test_images.to(device), test_labels=self.test_labels.to(device),
        )
        moved._scale, moved._shift = self._scale.to(device), self._shift.to(device)
        return moved

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(torch.float32).mul_(self._scale).add_(self._shift)

    def train_batch(
        self, indices: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (and, with a generator, augmented) training batch for ``indices``.

        ``generator`` is a CPU generator wherever the data is, so an augmentation draws the same
        choices on a GPU as on the CPU."""
        indices = indices.to(self.device)
        images = self.normalize(self.train_images[indices])
        if self.augment is not None and generator is not None:
            images = self.augment(images, generator)
        return images, self.train_labels[indices]

    def training_batches(
        self, order: torch.Tensor, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the samples ``order`` (in that order) in batches of ``batch_size``,
        normalised and, with a generator, augmented; a last batch of one sample is left out
        (``MIN_TRAIN_BATCH``).

        A :class:`DrawnAugment`'s choices for the whole pass are drawn first, in batch order, then
        copied to the data's device with ``order``: two copies per pass instead of one per batch,
        so on a GPU no training step waits for the host. The draws are the numbers per-batch
        :meth:`train_batch` calls would make, and leave ``generator`` in the same state."""
        sizes = training_batch_sizes(int(order.numel()), batch_size)
        order = order.to(self.device)
        augment = self.augment if generator is not None else None
        drawn = augment if isinstance(augment, DrawnAugment) and sizes else None
        if drawn is not None:
            draws = torch.cat([drawn.draw(n, generator) for n in sizes], dim=-1).to(self.device)
        start = 0
        for n in sizes:
            batch = order[start : start + n]
            images = self.normalize(self.train_images[batch])
            if drawn is not None:
                images = drawn.apply(images, draws[..., start : start + n])
            elif augment is not None:
                images = augment(images, generator)
            yield images, self.train_labels[batch]
            start += n

    def test_batches(self, batch_size: int):
        """Yields normalised test batches in order."""
        for start in range(0, int(self.test_labels.shape[0]), batch_size):
            stop = start + batch_size
            yield self.normalize(self.test_images[start:stop]), self.test_labels[start:stop]


@dataclass(eq=False)
class FederatedData:
    """A data set and its split into client shards (index arrays into the train set)."""

    dataset: ImageDataset
    shards: list[torch.Tensor]

    @property
    def num_clients(self) -> int:
        return len(self.shards)

    def shard_sizes(self) -> np.ndarray:
        return np.array([int(s.numel()) for s in self.shards], dtype=np.int64)


# --------------------------------------------------------------- locating data
def fedbench_cache_home() -> Path:
    """``$XDG_CACHE_HOME/fedbench`` (``~/.cache/fedbench``): downloads, checkpoints and traces live below."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "fedbench"


def user_cache_dir() -> Path:
    """Where fedbench keeps downloaded data: ``~/.cache/fedbench/data``."""
    return fedbench_cache_home() / "data"


def candidate_dirs(data_dir: str | None, subdir: str, system_dirs: Sequence[str] = ()) -> list[Path]:
    """The folders to search, in order: ``--data-dir``, ``$FEDBENCH_DATA``, the cache, system folders.

    ``--data-dir`` and ``$FEDBENCH_DATA`` may point at the data set's own folder
    or at a parent holding it as ``subdir``.
    """
    roots: list[Path] = []
    if data_dir:
        roots.append(Path(data_dir).expanduser())
    env = os.environ.get("FEDBENCH_DATA")
    if env:
        # Set but wrong: an error, as for --data-dir; falling back to other copies would hide it.
        if not Path(env).expanduser().is_dir():
            state = "is a file, expected a folder" if Path(env).expanduser().is_file() else "does not exist"
            raise DataNotFoundError(f"FEDBENCH_DATA={env} {state}; point it at the folder holding the data sets, "
                                    "or unset it")
        roots.append(Path(env).expanduser())
    roots.append(user_cache_dir())
    found: list[Path] = []
    for root in roots:
        found.extend([root, root / subdir])
    found.extend(Path(p) for p in system_dirs)
    return found


def locate(
    data_dir: str | None,
    subdir: str,
    is_complete: Callable[[Path], bool],
    *,
    system_dirs: Sequence[str] = (),
    how_to_get: str,
) -> Path | None:
    """The first candidate folder that holds a complete copy, else ``None``.

    An explicit ``--data-dir`` is searched alone (itself and ``subdir`` below
    it): the user named it, so falling back to another copy would hide a typo
    or an incomplete download. Without it the search order applies.
    """
    if data_dir:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(f"--data-dir {data_dir} does not exist; {how_to_get}")
        for folder in (root, root / subdir):
            if folder.is_dir() and is_complete(folder):
                return folder
        raise DataNotFoundError(f"--data-dir {data_dir} does not hold the data set (nor {subdir}/ inside it); {how_to_get}")
    for folder in candidate_dirs(None, subdir, system_dirs):
        if folder.is_dir() and is_complete(folder):
            return folder
    return None


def not_found(name: str, data_dir: str | None, subdir: str, system_dirs: Sequence[str], how_to_get: str):
    looked = ", ".join(str(p) for p in candidate_dirs(data_dir, subdir, system_dirs))
    return DataNotFoundError(f"{name} not found (looked in {looked}); {how_to_get}")
