"""The normalised HSIC (nHSIC) estimator and the information-plane probe.

NeuLite's curriculum-aware loss and the information-plane figure (paper Fig. 2)
both measure how much a representation still says about the input X and how
much it says about the label Y with the *same* estimator, the one of the
released code's ``hsic_normalized(a, b, sigma=5)`` (spec neulite.md §2.6):

* Gaussian kernel with a dimension-scaled bandwidth,
  ``K[i, j] = exp(-|a_i - a_j|² / (2 σ² d))`` (d = feature dimension of a);
* biased estimator ``HSIC(a, b) = tr(K_a H K_b H) / B²`` with ``H = I - 11ᵀ/B``;
* ``nHSIC(a, b) = HSIC(a, b) / sqrt(HSIC(a, a) · HSIC(b, b))`` — kernel CKA with
  RBF kernels, a value in [0, 1].

Everything is differentiable w.r.t. both inputs and free of data-dependent Python
branches, so the memory model can run it on the ``meta`` device. A batch whose
denominator vanishes (one sample, identical rows) is reported as *invalid*
instead of producing NaN; the caller decides what to drop.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.data import ImageDataset

SIGMA = 5.0  # the released code's bandwidth
MIN_DENOMINATOR = 1e-12  # spec §2.6 Decision: below this the batch's nHSIC terms are dropped


def rbf_kernel(features: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """B×B Gaussian kernel of the rows of ``features`` (flattened to B×d), bandwidth σ·sqrt(d)."""
    flat = features.flatten(1)
    dim = flat.shape[1]
    squared = (flat * flat).sum(dim=1)
    distances = (squared[:, None] + squared[None, :] - 2.0 * flat @ flat.T).abs()
    return torch.exp(-distances / (2.0 * sigma * sigma * dim))


def hsic_from_kernels(kernel_a: torch.Tensor, kernel_b: torch.Tensor) -> torch.Tensor:
    """Biased HSIC ``tr(K_a H K_b H) / B²``; right-centering only, as in the released code."""
    size = kernel_a.shape[0]
    centred_a = kernel_a - kernel_a.mean(dim=1, keepdim=True)  # K_a H
    centred_b = kernel_b - kernel_b.mean(dim=1, keepdim=True)  # K_b H
    return (centred_a * centred_b.T).sum() / (size * size)


class NHSIC(NamedTuple):
    """An nHSIC value and whether it is defined (``valid`` False: the value is 0 and must be ignored)."""

    value: torch.Tensor
    valid: torch.Tensor  # bool scalar


def nhsic_from_kernels(kernel_a: torch.Tensor, kernel_b: torch.Tensor) -> NHSIC:
    """nHSIC of two kernel matrices; a denominator below 1e-12 gives ``valid=False`` and value 0.

    The masking uses ``torch.where`` on both the denominator and the result so
    that an invalid batch contributes an exact zero gradient, never NaN.
    """
    if kernel_a.shape[0] < 2:
        zero = kernel_a.sum() * 0.0
        return NHSIC(zero, torch.zeros((), dtype=torch.bool, device=kernel_a.device))
    cross = hsic_from_kernels(kernel_a, kernel_b)
    product = hsic_from_kernels(kernel_a, kernel_a) * hsic_from_kernels(kernel_b, kernel_b)
    valid = product > MIN_DENOMINATOR * MIN_DENOMINATOR
    denominator = torch.sqrt(torch.where(valid, product, torch.ones_like(product)))
    return NHSIC(torch.where(valid, cross / denominator, torch.zeros_like(cross)), valid)


def nhsic(a: torch.Tensor, b: torch.Tensor, sigma: float = SIGMA) -> NHSIC:
    """nHSIC(a, b) of two batches of the same B samples (each flattened to B×d)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"nHSIC needs the same samples on both sides, got {a.shape[0]} and {b.shape[0]}")
    return nhsic_from_kernels(rbf_kernel(a, sigma), rbf_kernel(b, sigma))


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as float one-hot rows (NeuLite's Y)."""
    return F.one_hot(labels, num_classes).to(torch.float32)


# ----------------------------------------------------------- information plane
def balanced_probe(dataset: ImageDataset, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` test images of every class, normalised, in test-set order.

    The released code's ``LabeledDataset`` builds the same class-balanced set
    with 200 per class (spec §2.11); a class with fewer test images gives all it has.
    """
    labels = dataset.test_labels
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for cls in range(dataset.num_classes):
        keep[torch.nonzero(labels == cls).flatten()[:per_class]] = True
    index = torch.nonzero(keep).flatten()
    return dataset.normalize(dataset.test_images[index]), labels[index]


@torch.inference_mode()
def block_information_plane(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int, sigma: float = SIGMA
) -> dict[str, float]:
    """``nhsic/xz/block<b>`` and ``nhsic/yz/block<b>`` for every block output Z_b of a block model.

    Z_b is the flattened output of block b (the stem counts as part of block 1),
    computed in eval mode; X is the flattened normalised probe, Y its one-hot
    labels. Invalid values (degenerate kernels) are logged as NaN.
    """
    was_training = model.training
    model.eval()
    kernel_x = rbf_kernel(images, sigma)
    kernel_y = rbf_kernel(one_hot(labels, num_classes), sigma)
    metrics: dict[str, float] = {}
    features = model.stem(images)
    for index, block in enumerate(model.blocks, start=1):
        features = block(features)
        kernel_z = rbf_kernel(features, sigma)
        for name, kernel in (("xz", kernel_x), ("yz", kernel_y)):
            value, valid = nhsic_from_kernels(kernel_z, kernel)
            metrics[f"nhsic/{name}/block{index}"] = float(value) if bool(valid) else float("nan")
    model.train(was_training)
    return metrics
