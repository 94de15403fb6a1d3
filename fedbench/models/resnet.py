"""CIFAR-style post-activation ResNet18/34 (spec neulite.md §2.2, architectures.md §12.1).

stem conv3×3(64, stride 1) + BN + ReLU (no max-pool); layer1..layer4 of
BasicBlocks with 64/128/256/512 planes, first-unit strides 1, 2, 2, 2 and a
1×1 conv + BN downsample when the shape changes; head avgpool + Linear.
Blocks: b_1 = stem + layer1, b_2 = layer2, b_3 = layer3, b_4 = layer4.
Init as in NeuLite's code: Kaiming-normal (fan_out, relu) convs, BN γ=1 β=0.

HeteroFL/FedRolex's official code uses a pre-activation ResNet with a Scaler;
fedbench uses this one post-activation ResNet for every method and applies the
width-slicing rules to it (see docs/models.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from fedbench.models.base import BlockModel, ConvStandIn, CutSpec, PoolHead, require_min_side, scaled, tag

PLANES = (64, 128, 256, 512)
STRIDES = (1, 2, 2, 2)
MIN_SIDE = 8  # three stride-2 stages: 8 px reach layer4 as a 2×2 map


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN → (+ shortcut) → ReLU.

    ``in_space``/``out_space`` name the residual streams (channel spaces) the unit
    reads and writes; ``mid_space`` is its inner width.
    """

    def __init__(
        self, in_channels: int, channels: int, stride: int, *, in_space: str, mid_space: str, out_space: str
    ) -> None:
        super().__init__()
        self.conv1 = tag(
            nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False), out=mid_space, in_=in_space
        )
        self.bn1 = tag(nn.BatchNorm2d(channels), out=mid_space)
        self.conv2 = tag(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), out=out_space, in_=mid_space)
        self.bn2 = tag(nn.BatchNorm2d(channels), out=out_space)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                OrderedDict(
                    conv=tag(
                        nn.Conv2d(in_channels, channels, 1, stride, bias=False), out=out_space, in_=in_space
                    ),
                    bn=tag(nn.BatchNorm2d(channels), out=out_space),
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def resnet(
    arch: str, units: Sequence[int], input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
) -> BlockModel:
    """A CIFAR ResNet with ``units[i]`` BasicBlocks in layer i+1; every width scaled by ``width``."""
    require_min_side(arch, input_shape, MIN_SIDE, "three stride-2 stages")
    planes = [scaled(p, width) for p in PLANES]
    stem = nn.Sequential(
        OrderedDict(
            conv=tag(nn.Conv2d(input_shape[0], planes[0], 3, 1, 1, bias=False), out="layer1", in_=None),
            bn=tag(nn.BatchNorm2d(planes[0]), out="layer1"),
            relu=nn.ReLU(inplace=True),
        )
    )
    blocks = []
    last_units: list[BasicBlock] = []  # NeuLite co-adapts conv2/bn2 of each layer's last unit
    in_channels, in_space = planes[0], "layer1"
    for stage, (channels, stride, count) in enumerate(zip(planes, STRIDES, units, strict=True), start=1):
        layer = OrderedDict()
        for unit in range(count):
            layer[f"unit{unit + 1}"] = last = BasicBlock(
                in_channels,
                channels,
                stride if unit == 0 else 1,
                in_space=in_space,
                mid_space=f"layer{stage}.unit{unit + 1}",
                out_space=f"layer{stage}",
            )
            in_channels, in_space = channels, f"layer{stage}"
        blocks.append(nn.Sequential(layer))
        last_units.append(last)
    head = PoolHead(planes[-1], num_classes, in_space="layer4")
    model = BlockModel(
        arch=arch,
        stem=stem,
        blocks=blocks,
        head=head,
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
    )
    _init(model)
    model.cut = CutSpec(
        standins=(None,)
        + tuple(ConvStandIn(planes[i - 1], planes[i], STRIDES[i]) for i in range(1, len(planes))),
        stage_head="pool_linear",
        feature_dim=planes[-1],
        coadapt=((),) + tuple(model.names_of([u.conv2, u.bn2]) for u in last_units[:-1]),
    )
    return model


def _init(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_resnet18(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> BlockModel:
    """ResNet18: units (2, 2, 2, 2)."""
    return resnet("resnet18", (2, 2, 2, 2), input_shape, num_classes, width)


def build_resnet34(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> BlockModel:
    """ResNet34: units (3, 4, 6, 3)."""
    return resnet("resnet34", (3, 4, 6, 3), input_shape, num_classes, width)
