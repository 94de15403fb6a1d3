"""The one model contract every method cuts: a stem, an ordered list of blocks, a head.

Progressive methods (NeuLite, ProgFed) train block prefixes, DepthFL hangs
exits after blocks, width-scaled methods build narrower copies through the
``width`` multiplier. They all rely only on this surface, never on positions
in ``children()``.

Besides the modules, an architecture declares as data what the generic helpers
in :mod:`fedbench.models.cutting` need (:class:`CutSpec`: NeuLite stand-ins,
stage heads, co-adapted layers, feature width) and tags every layer with the
channel spaces its tensor axes live in (:func:`tag`), which
:mod:`fedbench.models.slicing` reads to extract width-scaled sub-models.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fedbench.errors import ConfigError
from fedbench.tracing import cache as trace_cache
from fedbench.tracing import meta as meta_outputs


def scaled(channels: int, width: float) -> int:
    """A hidden width scaled by the multiplier, rounded up as HeteroFL does (``ceil(r·c)``)."""
    return max(1, int(math.ceil(channels * width)))


def require_min_side(arch: str, input_shape: Sequence[int], min_side: int, why: str) -> None:
    """One-line :class:`ConfigError` when an input is smaller than the architecture's downsampling allows."""
    _, height, width_px = input_shape
    if min(height, width_px) < min_side:
        raise ConfigError(
            f"model '{arch}' needs inputs of at least {min_side}×{min_side} pixels ({why}), "
            f"got {height}×{width_px}"
        )


# ----------------------------------------------------------------- slicing metadata
@dataclass(frozen=True)
class Segment:
    """A run of a tensor axis that belongs to one channel space.

    ``inner`` > 1 means every channel of the space occupies ``inner`` consecutive
    entries (a flattened C×H×W map feeding a Linear layer has ``inner = H·W``).
    """

    space: str
    inner: int = 1


Axis = tuple[Segment, ...] | None  # None: never sliced (image channels, class outputs, kernel dims)
AxisLike = str | Segment | Sequence[str | Segment] | None


def axis(value: AxisLike) -> Axis:
    """Normalise ``"space"``, a :class:`Segment`, or a sequence of them (a concatenation) to an :data:`Axis`."""
    if value is None:
        return None
    if isinstance(value, (str, Segment)):
        value = (value,)
    return tuple(Segment(v) if isinstance(v, str) else v for v in value)


AXES_ATTR = "fedbench_axes"


def tag(
    module: nn.Module, out: AxisLike, in_: AxisLike = None, **tensors: AxisLike | tuple[AxisLike, ...]
) -> nn.Module:
    """Declare which channel space each axis of ``module``'s own tensors lives in; returns ``module``.

    Conv/Linear: ``weight`` is (out, in, kernel...), ``bias`` is (out,). Norm layers:
    every per-channel tensor is (out,). Extra keyword arguments give the axes of
    other tensors by name as tuples (``pos_embed=(None, None, "embed")``).
    """
    axes: dict[str, tuple[Axis, ...]] = {}
    for name, tensor in list(module.named_parameters(recurse=False)) + list(
        module.named_buffers(recurse=False)
    ):
        if tensor is None or name in tensors:
            continue
        if tensor.dim() == 0:
            axes[name] = ()
        elif name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
            axes[name] = (axis(out), axis(in_)) + (None,) * (tensor.dim() - 2)
        else:
            axes[name] = (axis(out),) + (None,) * (tensor.dim() - 1)
    for name, spec in tensors.items():
        axes[name] = tuple(axis(a) for a in spec)  # type: ignore[arg-type]
    setattr(module, AXES_ATTR, axes)
    return module


# ------------------------------------------------------------------- cutting metadata
@dataclass(frozen=True)
class ConvStandIn:
    """NeuLite's stand-in for a CNN block: conv3×3(in→out, stride, padding 1, no bias), no BN/ReLU."""

    in_channels: int
    out_channels: int
    stride: int


@dataclass(frozen=True)
class EncoderStandIn:
    """NeuLite's stand-in for a ViT block: one pre-LN encoder layer of the model's shape."""

    dim: int
    heads: int
    head_dim: int
    mlp_dim: int


StandIn = ConvStandIn | EncoderStandIn
StageHeadKind = Literal["pool_linear", "conv1x1_pool", "token_linear"]


@dataclass(frozen=True)
class CutSpec:
    """What an architecture tells the generic cutting helpers, as data.

    ``standins[i]`` replaces ``blocks[i]`` when a stage stops before it (``standins[0]``
    is None: block 1 is always real). ``stage_head`` is the kind of classifier a
    stage k < S ends in, on ``feature_dim`` features (the channels of the last
    spatial map, or the token width). ``coadapt[i]`` names the modules of
    ``blocks[i-1]`` that NeuLite trains together with ``blocks[i]``.
    """

    standins: tuple[StandIn | None, ...]
    stage_head: StageHeadKind
    feature_dim: int
    coadapt: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.coadapt) != len(self.standins):
            raise ValueError("CutSpec needs one stand-in and one co-adaptation scope per block")
        if self.standins[0] is not None or self.coadapt[0]:
            raise ValueError("block 1 has no stand-in and no co-adaptation scope")


# ------------------------------------------------------------------------- heads
class PoolHead(nn.Module):
    """Global average pool → [Linear → ReLU → Dropout]* → Linear(C).

    ``pooled`` is the feature NeuLite's projection MLP reads (the pooled last map).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        in_space: AxisLike,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        name: str = "head",
    ) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        layers: list[nn.Module] = []
        width, space = in_features, in_space
        for i, units in enumerate(hidden):
            hidden_space = f"{name}.hidden{i + 1}"
            layers += [tag(nn.Linear(width, units), out=hidden_space, in_=space), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width, space = units, hidden_space
        layers.append(tag(nn.Linear(width, num_classes), out=None, in_=space))
        self.classifier = nn.Sequential(*layers)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(x))


class ConvPoolHead(nn.Module):
    """conv1×1(→C) then global average pool: the SqueezeNet classifier."""

    def __init__(self, in_channels: int, num_classes: int, *, in_space: AxisLike) -> None:
        super().__init__()
        self.conv = tag(nn.Conv2d(in_channels, num_classes, 1), out=None, in_=in_space)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class TokenHead(nn.Module):
    """LayerNorm over tokens, then Linear(→C) on the CLS token (index 0): the ViT classifier."""

    def __init__(self, dim: int, num_classes: int, *, in_space: AxisLike) -> None:
        super().__init__()
        self.norm = tag(nn.LayerNorm(dim), out=in_space)
        self.fc = tag(nn.Linear(dim, num_classes), out=None, in_=in_space)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x))


# ------------------------------------------------------------------------- the model
class BlockModel(nn.Module):
    """``head(blocks[S-1](... blocks[0](stem(x))))``.

    ``arch`` is the registered name and ``width`` the multiplier; together with
    ``input_shape`` and ``num_classes`` they identify the model for caches
    (memory model, FLOP counts). The stem belongs to block 1 (``b_1 = stem +
    blocks[0]`` in the specs). ``cut`` is the architecture's :class:`CutSpec`
    (None for models that cannot be cut).
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
        cut: CutSpec | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.width = width
        if cut is not None and len(cut.standins) != len(self.blocks):
            raise ValueError(
                f"{arch}: CutSpec describes {len(cut.standins)} blocks, model has {len(self.blocks)}"
            )
        self.cut = cut
        # The builder that made this model (set by ``build_model``), so that narrower
        # copies of the same variant can be built without a registry lookup.
        self.builder: Callable[..., BlockModel] | None = None

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

    def names_of(self, modules: Iterable[nn.Module]) -> tuple[str, ...]:
        """Qualified names of submodules, so a builder can declare layers by object, stored by name."""
        names = {id(m): name for name, m in self.named_modules()}
        return tuple(names[id(m)] for m in modules)

    def block_output_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape after each block (from one forward on a zero image).

        A meta-device model (the sub-models of the memory model and of width methods) takes the
        answer from the trace cache when one is stored for the same architecture, width and
        input: the forward would be the only meta computation of such a process.
        """
        if _device_of(self).type != "meta":
            return self._traced_block_output_shapes()
        key = (type(self), self.arch, self.width, tuple(self.input_shape), self.num_classes)
        shapes = trace_cache.cached("shapes", key, (self,),
                                    lambda: [list(s) for s in self._traced_block_output_shapes()])
        return [tuple(s) for s in shapes]

    @torch.no_grad()
    def _traced_block_output_shapes(self) -> list[tuple[int, ...]]:
        was_training = self.training
        self.eval()
        device = _device_of(self)
        # On the meta device remembered kernel outputs make this cheap.
        remembered = meta_outputs.RememberedKernels() if device.type == "meta" else contextlib.nullcontext()
        try:
            with remembered:
                x = self.stem(torch.zeros(1, *self.input_shape, device=device))
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
