"""Train-time augmentation on whole batches of tensors, driven by an explicit generator.

A data set's ``augment(images, generator)`` runs after normalisation, on a float
N×C×H×W batch, so the crop's zero padding is filled with the *normalised* value
of a black pixel (``-mean/std``): the result equals torchvision's
``ToTensor → RandomCrop(size, padding) → RandomHorizontalFlip → Normalize``
(spec common.md §1.3) without a per-image Python loop. Every random draw comes
from the generator it is given, so a client's batches depend on its seed only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# ImageNet statistics: the spec's one normalisation for CIFAR-style pipelines (common.md §1.3).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class RandomCropFlip:
    """Random crop of the original size from a ``padding_px``-padded image, then a coin-flip mirror.

    ``mean``/``std`` are the data set's normalisation; they fix the fill value
    of the padding so that it matches zero-padding before normalisation.

    The random choices are drawn (:meth:`draw`) apart from their application (:meth:`apply`):
    a pass over a client's data draws every batch's choices on the CPU generator up front, in
    batch order, and moves them to the GPU in one copy, so a resident run's steps wait on no
    copy from the host, yet see the crops and flips a CPU run sees.
    """

    padding_px: int
    mean: Sequence[float]
    std: Sequence[float]
    flip_probability: float = 0.5
    _fill: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fill = -torch.tensor(self.mean, dtype=torch.float32) / torch.tensor(self.std, dtype=torch.float32)
        object.__setattr__(self, "_fill", tuple(fill.tolist()))

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The choices for ``n`` images, a 3×n int64 CPU tensor: crop top, crop left, flip (0/1)."""
        pad = self.padding_px
        top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.flip_probability
        return torch.stack([top, left, flip.long()])

    def apply(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """``images`` cropped and flipped as ``draws`` (from :meth:`draw`, on the images' device) say."""
        n, c, h, w = images.shape
        pad = self.padding_px
        padded = images.new_empty(n, c, h + 2 * pad, w + 2 * pad)
        for channel, value in enumerate(self._fill):  # a scalar fill: nothing to copy to the device
            padded[:, channel].fill_(value)
        padded[:, :, pad : pad + h, pad : pad + w] = images
        top, left, flip = draws.unbind(0)
        rows = top[:, None] + torch.arange(h, device=images.device)
        cols = left[:, None] + torch.arange(w, device=images.device)
        # A mirrored crop reads its columns right to left: crop and flip are one gather.
        cols = torch.where(flip.bool()[:, None], cols.flip(1), cols)
        out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
        return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.draw(images.shape[0], generator).to(images.device))


def pixel_mean_std(images: torch.Tensor, chunk_images: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 N×C×H×W images, in [0, 1] units.

    Counts a histogram of the 256 pixel values per channel chunk by chunk, so a
    large set is never converted to float as a whole.
    """
    channels = images.shape[1]
    histogram = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, images.shape[0], chunk_images):
        chunk = images[start : start + chunk_images].numpy()
        for channel in range(channels):
            histogram[channel] += np.bincount(chunk[:, channel].ravel(), minlength=256)
    levels = np.arange(256, dtype=np.float64) / 255.0
    totals = np.maximum(histogram.sum(axis=1), 1)
    mean = (histogram * levels).sum(axis=1) / totals
    var = (histogram * levels**2).sum(axis=1) / totals - mean**2
    std = np.sqrt(np.maximum(var, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
