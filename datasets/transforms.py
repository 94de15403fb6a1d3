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
    """

    padding_px: int
    mean: Sequence[float]
    std: Sequence[float]
    flip_probability: float = 0.5
    _fill: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fill = -torch.tensor(self.mean, dtype=torch.float32) / torch.tensor(self.std, dtype=torch.float32)
        object.__setattr__(self, "_fill", fill.view(1, -1, 1, 1))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        pad = self.padding_px
        padded = self._fill.to(images.device, images.dtype).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
        padded[:, :, pad : pad + h, pad : pad + w] = images
        # Drawn on the CPU generator whatever the images' device, so a GPU run makes the same
        # choices as a CPU run; the draws then travel in one small copy.
        top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < self.flip_probability
        if images.device != top.device:
            top, left, flip = torch.stack([top, left, flip.long()]).to(images.device).unbind(0)
            flip = flip.bool()
        rows = top[:, None] + torch.arange(h, device=images.device)
        cols = left[:, None] + torch.arange(w, device=images.device)
        # A mirrored crop reads its columns right to left: crop and flip are one gather.
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        out = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
        return out.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


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
