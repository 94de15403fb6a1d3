"""Forward and backward FLOPs per block and of a whole model, for the virtual clock.

Counted with :class:`torch.utils.flop_counter.FlopCounterMode` on the *meta*
device (shapes only: no data, no weights, no arithmetic), per sample. The
counter covers matrix products, convolutions and attention; BatchNorm,
activations, pooling and optimizer updates count as zero, which is the usual
convention and below a few per cent for these models.

Block j's forward FLOPs are those of the stem (block 1 only) and the block; its
backward FLOPs are those of the gradients of its weights and of its input (the
stem's input is the image, which needs no gradient). A training step of the
whole model costs ``forward + backward`` of every block and the head.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from fedbench.models import build_model
from fedbench.tracing.meta import building_on_meta


@dataclass(frozen=True)
class Flops:
    """FLOPs of one forward and one backward pass, per sample."""

    forward: int
    backward: int

    @property
    def training(self) -> int:
        return self.forward + self.backward

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.forward + other.forward, self.backward + other.backward)


@dataclass(frozen=True)
class ModelFlops:
    """Per-block FLOPs (block 1 includes the stem), the head's, and their sums."""

    blocks: tuple[Flops, ...]
    head: Flops

    @property
    def total(self) -> Flops:
        total = self.head
        for block in self.blocks:
            total = total + block
        return total


def count_flops(module: nn.Module, inputs: torch.Tensor, input_grad: bool = True) -> Flops:
    """Forward and backward FLOPs of ``module`` on ``inputs`` (any device; meta is cheapest).

    ``input_grad`` says whether the backward pass must also produce the input's
    gradient (true inside a network, false for the first layer on images).
    """
    inputs = inputs.detach().requires_grad_(input_grad)
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: only when tracing

    with FlopCounterMode(display=False) as forward:
        output = module(inputs)
    if not output.requires_grad:  # nothing to differentiate (a parameter-free, input-free module)
        return Flops(forward.get_total_flops(), 0)
    with FlopCounterMode(display=False) as backward:
        output.sum().backward()
    return Flops(forward.get_total_flops(), backward.get_total_flops())


def block_flops(model: nn.Module) -> ModelFlops:
    """FLOPs of every block and the head of a :class:`~fedbench.models.base.BlockModel`, per sample.

    Runs one backward pass per block, so the model's gradients are cleared afterwards;
    pass a copy (or a meta-device model, as :func:`model_flops` does) to keep them.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:
        x = torch.zeros(1, *model.input_shape, device=device)
        stem_and_first = nn.Sequential(model.stem, model.blocks[0])
        blocks = [count_flops(stem_and_first, x, input_grad=False)]
        with torch.no_grad():
            x = stem_and_first(x)
        for block in list(model.blocks)[1:]:
            blocks.append(count_flops(block, x))
            with torch.no_grad():
                x = block(x)
        head = count_flops(model.head, x)
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return ModelFlops(tuple(blocks), head)


@lru_cache(maxsize=256)
def model_flops(
    arch: str, input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
) -> ModelFlops:
    """Per-sample FLOPs of a registered model, cached by (arch, input shape, classes, width).

    The model is built on the meta device, so this costs no memory for weights
    and no arithmetic.
    """

    with building_on_meta():
        model = build_model(arch, tuple(input_shape), num_classes, width=width)
    return block_flops(model)
