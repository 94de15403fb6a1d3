"""SqueezeNet with simple bypass for CIFAR-size inputs (spec architectures.md §12.3; a fedbench proposal).

The network of ``weiaicunzai/pytorch-cifar100``: stem conv3×3(96) + BN + ReLU
(+ 2×2 max-pool when ``stem_pool``), eight Fire modules with bypasses
f3 = fire3(f2) + f2, f5 = fire5(f4) + f4, f7 = fire7(f6) + f6, max-pools after
fire4 and fire8, head conv1×1(→C) + global avgpool. Blocks keep every bypass
inside one block: b_1 = stem, fire2, fire3; b_2 = fire4, pool, fire5;
b_3 = fire6, fire7; b_4 = fire8, pool, fire9.

``squeezenet`` keeps the stem pool (the reference layout); ``squeezenet_nopool``
drops it, so every later map is twice as large per side and the model needs
more training memory than ResNet18 (spec Q5: the memory model decides which
variant reproduces the paper's participation-rate ordering). Pools use
``ceil_mode`` so that their output sizes equal those of NeuLite's stride-2
stand-ins on odd-sized maps; on 32×32 this is the reference network exactly.
Convolutions keep their biases and PyTorch's default init, as in the reference.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fedbench.models.base import BlockModel, ConvPoolHead, ConvStandIn, CutSpec, require_min_side, scaled, tag

# Per block: (name, output channels, squeeze channels, bypass, pool after it).
BLOCKS: tuple[tuple[tuple[str, int, int, bool, bool], ...], ...] = (
    (("fire2", 128, 16, False, False), ("fire3", 128, 16, True, False)),
    (("fire4", 256, 32, False, True), ("fire5", 256, 32, True, False)),
    (("fire6", 384, 48, False, False), ("fire7", 384, 48, True, False)),
    (("fire8", 512, 64, False, True), ("fire9", 512, 64, False, False)),
)
STEM_CHANNELS = 96


def _conv_bn_relu(
    in_channels: int, channels: int, kernel: int, *, in_space: object, space: str
) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=tag(nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2), out=space, in_=in_space),
            bn=tag(nn.BatchNorm2d(channels), out=space),
            relu=nn.ReLU(inplace=True),
        )
    )


class Fire(nn.Module):
    """squeeze 1×1 → concat[expand 1×1, expand 3×3], each conv + BN + ReLU; ``+ x`` when ``bypass``.

    The output axis is the concatenation of the two expand spaces (``space.e1``,
    ``space.e3``); a bypassed Fire writes the same spaces as its input, so the
    addition sees equal index sets on both sides.
    """

    def __init__(
        self,
        in_channels: int,
        expand: int,
        squeeze: int,
        *,
        bypass: bool,
        in_space: object,
        space: str,
        name: str,
    ) -> None:
        super().__init__()
        self.bypass = bypass
        self.out_space = (f"{space}.e1", f"{space}.e3")
        self.squeeze = _conv_bn_relu(in_channels, squeeze, 1, in_space=in_space, space=f"{name}.squeeze")
        self.expand1x1 = _conv_bn_relu(
            squeeze, expand, 1, in_space=f"{name}.squeeze", space=self.out_space[0]
        )
        self.expand3x3 = _conv_bn_relu(
            squeeze, expand, 3, in_space=f"{name}.squeeze", space=self.out_space[1]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        out = torch.cat([self.expand1x1(s), self.expand3x3(s)], 1)
        return out + x if self.bypass else out


def build(
    input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0, *, stem_pool: bool = True
) -> BlockModel:
    arch = "squeezenet" if stem_pool else "squeezenet_nopool"
    halvings = 3 if stem_pool else 2
    require_min_side(arch, input_shape, 2**halvings, f"{'three' if stem_pool else 'two'} 2×2 max-pools")
    stem_channels = scaled(STEM_CHANNELS, width)
    stem_layers = _conv_bn_relu(input_shape[0], stem_channels, 3, in_space=None, space="stem")
    if stem_pool:
        stem_layers.add_module("pool", nn.MaxPool2d(2, ceil_mode=True))
    blocks, block_out, strides, last_fires = [], [], [], []
    in_channels, in_space, stream = stem_channels, "stem", "stem"
    for layout in BLOCKS:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        stride = 1
        for name, out, squeeze, bypass, pool in layout:
            expand = scaled(out // 2, width)
            stream = stream if bypass else name  # a bypassed Fire writes the spaces of its input
            layers[name] = fire = Fire(
                in_channels,
                expand,
                scaled(squeeze, width),
                bypass=bypass,
                in_space=in_space,
                space=stream,
                name=name,
            )
            in_channels, in_space = 2 * expand, fire.out_space
            if pool:
                layers[f"pool_{name}"] = nn.MaxPool2d(2, ceil_mode=True)
                stride = 2
        blocks.append(nn.Sequential(layers))
        block_out.append(in_channels)
        strides.append(stride)
        last_fires.append(fire)
    head = ConvPoolHead(in_channels, num_classes, in_space=in_space)
    model = BlockModel(
        arch=arch,
        stem=stem_layers,
        blocks=blocks,
        head=head,
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
    )
    model.cut = CutSpec(
        standins=(None,)
        + tuple(ConvStandIn(block_out[i - 1], block_out[i], strides[i]) for i in range(1, len(BLOCKS))),
        stage_head="conv1x1_pool",
        feature_dim=block_out[-1],
        coadapt=((),)
        + tuple(
            model.names_of([f.expand1x1.conv, f.expand1x1.bn, f.expand3x3.conv, f.expand3x3.bn])
            for f in last_fires[:-1]
        ),
    )
    return model


def build_without_stem_pool(
    input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0
) -> BlockModel:
    """``squeezenet_nopool``: the same network without the stem max-pool (maps 2× larger per side)."""
    return build(input_shape, num_classes, width, stem_pool=False)
