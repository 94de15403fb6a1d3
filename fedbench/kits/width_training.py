"""What a width-scaled HeteroFL/FedRolex client trains differently (spec baselines.md §6.4).

* BatchNorm without running statistics: batch statistics in training, only γ/β are
  learned and sent; the server recomputes statistics before evaluating (static BN,
  :mod:`fedbench.kits.bn`).
* The Scaler: every normalisation layer's input is divided by the client's rate
  β = r / r_g during training and left alone at evaluation ([C-HFL]
  ``modules.Scaler``, placed before each norm layer). Directly before a norm layer
  that uses batch statistics it is a no-op up to ε; it is kept for fidelity. In a model
  without normalisation layers (``cnn``) it divides each convolution's output, where
  HeteroFL's own CNN has conv → scaler → norm → ReLU and, without norm, conv → scaler
  → ReLU; there it is what keeps a narrow client's activations on the full model's scale.
* Masked cross-entropy: logits of the classes absent from the client's shard are set
  to 0 (``masked_fill(…, 0)``, not −∞) before the loss ([C-HFL] ``label_split``).

The Scaler is a forward pre-hook object, so that ``copy.deepcopy`` (the memory model's
meta copy) carries it and the memory model counts the extra tensor it creates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.training.graphs import graph_reusable, graph_safe

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def norm_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, NORM_TYPES)]


@dataclass(frozen=True)
class Scaler:
    """Forward pre-hook: divide a norm layer's input by ``rate`` while the layer trains."""

    rate: float

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if not module.training:
            return None
        return (args[0] / self.rate, *args[1:])


@dataclass(frozen=True)
class OutputScaler:
    """Forward hook: divide a convolution's output by ``rate`` while it trains (a model
    without normalisation layers)."""

    rate: float

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        return output / self.rate


def add_scaler(model: nn.Module, rate: float) -> list[torch.utils.hooks.RemovableHandle]:
    """Put a :class:`Scaler` of ``rate`` before every normalisation layer of ``model``, or, in a
    model without any, an :class:`OutputScaler` after every convolution. Rate 1 divides by one,
    so nothing is attached."""
    if rate == 1:
        return []
    norms = norm_layers(model)
    if norms:
        return [m.register_forward_pre_hook(Scaler(rate)) for m in norms]
    convolutions = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    return [m.register_forward_hook(OutputScaler(rate)) for m in convolutions]


def use_batch_statistics(model: nn.Module) -> None:
    """BatchNorm as a HeteroFL client has it: batch statistics only, running statistics
    neither used nor updated (``track_running_stats=False``)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False


@graph_safe
@dataclass(frozen=True)
class MaskedCrossEntropy:
    """Cross-entropy after zeroing the logits of the classes a client does not hold.

    ``classes`` are the labels present in the client's shard. A value object (hashable,
    equal by content), so the memory model's cache treats equal masks as one loss. The mask is
    made once per device and kept (not pickled): made per batch it would be a copy from the host,
    which on a GPU waits for the queued steps, and cannot be replayed from a CUDA graph.
    """

    classes: tuple[int, ...]
    num_classes: int
    _masks: dict[torch.device, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def absent(self, device: torch.device) -> torch.Tensor:
        mask = self._masks.get(device)
        if mask is None:
            mask = torch.ones(self.num_classes, dtype=torch.bool)
            mask[list(self.classes)] = False
            mask = self._masks[device] = mask.to(device)
        return mask

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = model(images)
        return F.cross_entropy(logits.masked_fill(self.absent(logits.device), 0.0), labels)

    def __getstate__(self) -> dict:
        return {"classes": self.classes, "num_classes": self.num_classes}

    def __setstate__(self, state: dict) -> None:
        for name, value in {**state, "_masks": {}}.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, labels: Iterable[int], num_classes: int) -> MaskedCrossEntropy:
        return cls(tuple(sorted({int(label) for label in labels})), num_classes)


@graph_reusable
class ClientMaskedCrossEntropy:
    """:class:`MaskedCrossEntropy` for local training, over one mask tensor that
    :meth:`for_client` refills in place before each client: the same loss object over the same
    mask memory for every client, so one CUDA graph of a width level's step serves them all
    (:func:`graph_reusable`) instead of a capture per client."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.absent: torch.Tensor | None = None

    def for_client(self, classes: Iterable[int], device: torch.device) -> ClientMaskedCrossEntropy:
        """This loss, masking the classes not in ``classes`` (in stream order: steps queued before
        still read the previous client's mask)."""
        absent = torch.ones(self.num_classes, dtype=torch.bool)
        absent[list(classes)] = False
        if self.absent is None:
            self.absent = absent.to(device)
        else:
            self.absent.copy_(absent)
        return self

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert self.absent is not None, "for_client() comes before training"
        logits = model(images)
        return F.cross_entropy(logits.masked_fill(self.absent, 0.0), labels)
