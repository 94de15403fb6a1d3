"""Evaluation of a model on the centralised test set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.data import ImageDataset
from fedbench.training.loop import placed_on


@torch.inference_mode()
def evaluate(
    model: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy over the whole test set, computed on ``device``.
    Sums stay on the device until the end: one synchronisation per evaluation, not per batch."""
    return evaluate_outputs(model, dataset, batch_size, device)[0]


@torch.inference_mode()
def evaluate_outputs(
    model: nn.Module, dataset: ImageDataset, batch_size: int, device: torch.device | str = "cpu"
) -> list[dict[str, float]]:
    """:func:`evaluate` for a model whose forward returns several logits (a tensor counts as one):
    the scores of each, in order, from one pass over the test set, so outputs that share a trunk
    (NeuLite's stage models, DepthFL's exits) pay for it once."""
    was_training = model.training
    model.eval()
    loss_sums: torch.Tensor | None = None
    corrects: torch.Tensor | None = None
    count = 0
    with placed_on(model, device):
        for images, labels in dataset.test_batches(batch_size):
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            if isinstance(outputs, torch.Tensor):
                outputs = (outputs,)
            if loss_sums is None or corrects is None:
                loss_sums = torch.zeros(len(outputs), dtype=torch.float64, device=device)
                corrects = torch.zeros(len(outputs), dtype=torch.int64, device=device)
            for index, logits in enumerate(outputs):
                loss_sums[index] += F.cross_entropy(logits, labels, reduction="sum")
                corrects[index] += (logits.argmax(dim=1) == labels).sum()
            count += int(labels.numel())
    model.train(was_training)
    if loss_sums is None or corrects is None:  # an empty test set: nothing to score
        return [{"loss": 0.0, "accuracy": 0.0}]
    count = max(count, 1)
    return [{"loss": loss / count, "accuracy": correct / count}
            for loss, correct in zip(loss_sums.tolist(), corrects.tolist(), strict=True)]
