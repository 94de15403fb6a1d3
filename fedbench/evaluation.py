"""Evaluation of a model on the centralised test set."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.data import ImageDataset


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: ImageDataset, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy over the whole test set."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in dataset.test_batches(batch_size):
        logits = model(images)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += int(labels.numel())
    model.train(was_training)
    return {"loss": loss_sum / max(count, 1), "accuracy": correct / max(count, 1)}
