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
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    with placed_on(model, device):
        for images, labels in dataset.test_batches(batch_size):
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum")
            correct += (logits.argmax(dim=1) == labels).sum()
            count += int(labels.numel())
    model.train(was_training)
    return {"loss": float(loss_sum) / max(count, 1), "accuracy": int(correct) / max(count, 1)}
