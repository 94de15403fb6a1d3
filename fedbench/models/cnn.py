"""``cnn``: the layer plan of the FedAvg paper's CNN (McMahan et al., 2017), with "valid" convolutions.

conv5×5(32) → ReLU → pool2 → conv5×5(64) → ReLU → pool2 → FC(512) → ReLU → FC(C).
On 28×28 grey images this has 582,026 parameters: the convolutions are "valid"
where the input allows it (≥ 16 px), so the FC layer reads a 4×4 map. The FedAvg
paper's model pads them ("same": a 7×7 map, 1,663,370 parameters), so accuracies
of this model are not that paper's. Below 16 px the convolutions are "same", so
the model also takes the tiny synthetic images; the FC input size follows from
the input shape.
"""

from __future__ import annotations

from torch import nn

from fedbench.errors import ConfigError
from fedbench.models.base import BlockModel, ConvStandIn, CutSpec, Segment, scaled, tag

MIN_SIDE = 4  # with "same" padding, two 2×2 pools need at least 4 px


def build(input_shape: tuple[int, int, int], num_classes: int, width: float = 1.0) -> BlockModel:
    channels, height, width_px = input_shape
    if min(height, width_px) < MIN_SIDE:
        raise ConfigError(
            f"model 'cnn' needs inputs of at least {MIN_SIDE}×{MIN_SIDE} pixels, got {height}×{width_px}"
        )
    pad = 0 if min(height, width_px) >= 16 else 2
    c1, c2, hidden = scaled(32, width), scaled(64, width), scaled(512, width)

    def side(px: int) -> int:
        px = (px + 2 * pad - 4) // 2
        return (px + 2 * pad - 4) // 2

    stem = nn.Identity()
    conv1 = tag(nn.Conv2d(channels, c1, 5, padding=pad), out="conv1", in_=None)
    conv2 = tag(nn.Conv2d(c1, c2, 5, padding=pad), out="conv2", in_="conv1")
    blocks = [
        nn.Sequential(conv1, nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(conv2, nn.ReLU(inplace=True), nn.MaxPool2d(2)),
    ]
    pixels = side(height) * side(width_px)  # the flattened map is channel-major: C × (H·W)
    head = nn.Sequential(
        nn.Flatten(),
        tag(nn.Linear(c2 * pixels, hidden), out="fc1", in_=Segment("conv2", inner=pixels)),
        nn.ReLU(inplace=True),
        tag(nn.Linear(hidden, num_classes), out=None, in_="fc1"),
    )
    model = BlockModel(
        arch="cnn",
        stem=stem,
        blocks=blocks,
        head=head,
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
    )
    model.cut = CutSpec(
        standins=(None, ConvStandIn(c1, c2, 2)),
        stage_head="pool_linear",
        feature_dim=c2,
        coadapt=((), model.names_of([conv1])),
    )
    return model
