"""VGG11_bn for CIFAR-size inputs (spec architectures.md §12.2; a fedbench proposal).

cfg [64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M] of conv3×3 (pad 1) +
BN + ReLU with 2×2 max-pools, then the ProFL-style dense head: global avgpool
→ Linear(512→4096) → ReLU → Dropout(0.4) → Linear(4096→4096) → ReLU →
Dropout(0.4) → Linear(4096→C). Blocks are cut at pools: b_1 = conv1, pool,
conv2, pool; b_2 = conv3, conv4, pool; b_3 = conv5, conv6, pool; b_4 = conv7,
conv8, pool (+ the two dense layers, which sit in the head).

Pools use ``ceil_mode`` so that 28×28 inputs survive the five halvings
(28→14→7→4→2→1); on 32×32 and 64×64 this is identical to floor pooling. The
global avgpool before the dense head is an identity on 32×32 (the map is 1×1
there) and lets larger inputs use the same head.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fedbench.models.base import BlockModel, ConvStandIn, CutSpec, PoolHead, require_min_side, scaled, tag

# (output channels of each conv, and whether a pool follows it), grouped by block.
BLOCKS: tuple[tuple[tuple[int, bool], ...], ...] = (
    ((64, True), (128, True)),
    ((256, False), (256, True)),
    ((512, False), (512, True)),
    ((512, False), (512, True)),
)
HIDDEN = (4096, 4096)
DROPOUT = 0.4
MIN_SIDE = 16  # four halvings bring 16 px to 1×1 before the last block's pool


class ConvBN(nn.Module):
    """conv3×3 (pad 1) → BN → ReLU."""

    def __init__(self, in_channels: int, channels: int, *, in_space: str | None, space: str) -> None:
        super().__init__()
        self.conv = tag(nn.Conv2d(in_channels, channels, 3, padding=1), out=space, in_=in_space)
        self.bn = tag(nn.BatchNorm2d(channels), out=space)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def build(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> BlockModel:
    require_min_side("vgg11_bn", input_shape, MIN_SIDE, "five 2×2 max-pools")
    blocks = []
    block_out: list[int] = []
    last_convs: list[ConvBN] = []  # the conv stage that ends each block (NeuLite co-adapts it)
    in_channels, in_space, index, pools = input_shape[0], None, 0, 0
    for layout in BLOCKS:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for channels, pool in layout:
            index += 1
            channels = scaled(channels, width)
            layers[f"conv{index}"] = conv = ConvBN(
                in_channels, channels, in_space=in_space, space=f"conv{index}"
            )
            in_channels, in_space = channels, f"conv{index}"
            if pool:
                pools += 1
                layers[f"pool{pools}"] = nn.MaxPool2d(2, ceil_mode=True)
        blocks.append(nn.Sequential(layers))
        block_out.append(in_channels)
        last_convs.append(conv)
    head = PoolHead(
        in_channels,
        num_classes,
        in_space=in_space,
        hidden=[scaled(units, width) for units in HIDDEN],
        dropout=DROPOUT,
    )
    model = BlockModel(
        arch="vgg11_bn",
        stem=nn.Identity(),
        blocks=blocks,
        head=head,
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    model.cut = CutSpec(
        standins=(None,)
        + tuple(ConvStandIn(block_out[i - 1], block_out[i], 2) for i in range(1, len(BLOCKS))),
        stage_head="pool_linear",
        feature_dim=block_out[-1],
        coadapt=((),) + tuple(model.names_of([c.conv, c.bn]) for c in last_convs[:-1]),
    )
    return model
