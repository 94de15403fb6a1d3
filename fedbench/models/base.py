"""The one model contract every method cuts: a stem, an ordered list of blocks, a head.

Progressive methods (NeuLite, ProgFed) train block prefixes, DepthFL hangs
exits after blocks, width-scaled methods build narrower copies through the
``width`` multiplier. They all rely only on this surface, never on positions
in ``children()``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def scaled(channels: int, width: float) -> int:
    """A hidden width scaled by the multiplier, rounded up as HeteroFL does (``ceil(r·c)``)."""
    return max(1, int(math.ceil(channels * width)))


class BlockModel(nn.Module):
    """``head(blocks[S-1](... blocks[0](stem(x))))``.

    ``arch`` names the architecture and ``width`` its multiplier; together with
    ``input_shape`` and ``num_classes`` they identify the model for caches
    (memory model, FLOP counts).
    """

    def __init__(
        self,
        *,
        arch: str,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        input_shape: tuple[int, int, int],
        num_classes: int,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.width = width

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def features(self, x: torch.Tensor, num_blocks: int | None = None) -> torch.Tensor:
        """Output of the stem and the first ``num_blocks`` blocks (all by default)."""
        x = self.stem(x)
        for block in self.blocks[: self.num_blocks if num_blocks is None else num_blocks]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def block_output_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape after each block (from one forward on a zero image)."""
        was_training = self.training
        self.eval()
        try:
            x = self.stem(torch.zeros(1, *self.input_shape, device=_device_of(self)))
            shapes = []
            for block in self.blocks:
                x = block(x)
                shapes.append(tuple(x.shape[1:]))
        finally:
            self.train(was_training)
        return shapes


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
