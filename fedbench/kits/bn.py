"""Static batch normalisation (sBN): recompute a model's BatchNorm statistics on training data.

HeteroFL (Diao et al., ICLR 2021) and FedRolex clients train BatchNorm with batch
statistics only, so the server has no running statistics to evaluate with. Before
every evaluation [C-HFL] ``stats()`` resets the statistics, sets ``momentum=None``
(a cumulative average over batches), runs the training data through the model in
train mode under no-grad, and then evaluates in eval mode with those statistics
(spec baselines.md §6.6). Any method whose global model lacks trustworthy running
statistics can reuse :func:`recompute_bn_statistics`.
"""

from __future__ import annotations

import torch
from torch import nn

from fedbench.data import ImageDataset
from fedbench.training.loop import placed_on

BatchNorm = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def recompute_bn_statistics(
    model: nn.Module,
    dataset: ImageDataset,
    indices: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> int:
    """Replace the running statistics of every BatchNorm in ``model`` (in place) by the
    cumulative average over the training samples ``indices``, fed through the training
    transforms (augmentation drawn from ``generator``, as [C-HFL] does). Weights are not
    touched. Returns the number of samples used (0: the model has no BatchNorm)."""
    layers = [m for m in model.modules() if isinstance(m, BatchNorm)]
    if not layers or indices.numel() == 0:
        return 0
    saved = [(m.momentum, m.track_running_stats) for m in layers]
    for m in layers:
        m.track_running_stats = True
        m.momentum = None
        m.reset_running_stats()
    was_training = model.training
    model.train()
    used = 0
    try:
        with placed_on(model, device):
            # Augmentation drawn on the CPU generator, as in training; a one-sample batch, which has
            # no variance, is left out.
            for images, _ in dataset.training_batches(indices, batch_size, generator):
                model(images.to(device))
                used += int(images.shape[0])
    finally:
        for m, (momentum, track) in zip(layers, saved, strict=True):
            m.momentum, m.track_running_stats = momentum, track
        model.train(was_training)
    return used


def sbn_indices(
    shards: list[torch.Tensor], max_samples: int | None, generator: torch.Generator
) -> torch.Tensor:
    """The union of the clients' training shards in a random order drawn from ``generator``,
    or the first ``max_samples`` of that order (spec decisions Q15: all shards by default,
    ``sbn_max_samples`` to subsample).

    The order matters: the pass averages per-batch variances, so batches must be mixed like
    [C-HFL]'s shuffled loader's. Walking the union in index order would feed a data set stored
    class by class (CINIC-10, mini-ImageNet) one class per batch, and the statistics would lose
    the variance between classes."""
    union = torch.unique(torch.cat([s.long() for s in shards])) if shards else torch.empty(0, dtype=torch.long)
    shuffled = union[torch.randperm(int(union.numel()), generator=generator)]
    return shuffled if max_samples is None else shuffled[:max_samples]
