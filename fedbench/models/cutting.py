"""Generic cuts of a :class:`BlockModel` by block index (NeuLite, ProgFed, DepthFL).

Everything here reads the architecture's :class:`CutSpec` and block output
shapes; nothing knows a particular architecture. The cut modules *share* the
model's stem and blocks (no copies), so training a cut trains the model; copy
the model first when that is not wanted. Block and stage indices are 1-based,
as in the specs (stage k trains block k; S = ``model.num_blocks``).

* :class:`StageModel` — NeuLite's S_k: blocks 1..k, the stand-ins for blocks
  k+1..S and a stage head (:func:`output_module`); at k = S it is the model
  itself (same modules, same state-dict keys). ``forward_all`` also returns
  Z (the flattened last spatial map) and the pooled feature.
* :func:`prefix_model` — ProgFed's sub-model: blocks 1..k + a pooled linear head.
* :func:`exit_heads` / :class:`ExitModel` — DepthFL's early exits (spec §8.2, §12.5).
* :func:`coadaptation_scope` — the parameter names NeuLite unfreezes in block k−1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.errors import ConfigError, PluginError
from fedbench.models.base import (
    BlockModel,
    ConvPoolHead,
    ConvStandIn,
    CutSpec,
    EncoderStandIn,
    PoolHead,
    StandIn,
    TokenHead,
)
from fedbench.models.vit import Encoder


def check_block_index(model: BlockModel, k: int, what: str = "block") -> int:
    """``k`` if it is a valid 1-based block index of ``model``, else a one-line :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model.num_blocks:
        raise ConfigError(
            f"{what} index {k!r} is out of range for model '{model.arch}': use 1..{model.num_blocks}"
        )
    return k


def cut_spec(model: BlockModel) -> CutSpec:
    spec = getattr(model, "cut", None)
    if spec is None:
        raise ConfigError(
            f"model '{model.arch}' declares no CutSpec, so it cannot be cut into stages; "
            "give its builder a CutSpec (see docs/models.md)"
        )
    if len(spec.standins) != model.num_blocks:
        raise PluginError(
            f"model '{model.arch}': CutSpec describes {len(spec.standins)} blocks, model has {model.num_blocks}"
        )
    return spec


# ------------------------------------------------------------------ building blocks
def standin_module(spec: StandIn) -> nn.Module:
    """The module NeuLite puts in place of a missing block."""
    if isinstance(spec, ConvStandIn):
        return nn.Conv2d(spec.in_channels, spec.out_channels, 3, spec.stride, 1, bias=False)
    if isinstance(spec, EncoderStandIn):
        return Encoder(spec.dim, spec.heads, spec.head_dim, spec.mlp_dim, name="standin")
    raise PluginError(f"unknown stand-in spec {spec!r}")


def stage_head(model: BlockModel) -> nn.Module:
    """A fresh classifier of the kind the architecture uses after stand-ins (spec §12.1–12.4)."""
    spec = cut_spec(model)
    dim, classes = spec.feature_dim, model.num_classes
    if spec.stage_head == "pool_linear":
        return PoolHead(dim, classes, in_space=None)
    if spec.stage_head == "conv1x1_pool":
        return ConvPoolHead(dim, classes, in_space=None)
    if spec.stage_head == "token_linear":
        return TokenHead(dim, classes, in_space=None)
    raise PluginError(f"model '{model.arch}': unknown stage head kind {spec.stage_head!r}")


def pooled_feature(head: nn.Module, last_map: torch.Tensor) -> torch.Tensor:
    """The pooled feature a head classifies: its ``pooled()`` if it has one, else a global average pool."""
    pooled = getattr(head, "pooled", None)
    if pooled is not None:
        return pooled(last_map)
    if last_map.dim() == 4:
        return last_map.mean(dim=(2, 3))
    raise PluginError(f"head {type(head).__name__} has no pooled() and its input is not a C×H×W map")


class OutputModule(nn.Module):
    """NeuLite's O_k: the stand-ins for blocks k+1..S and the stage-k head (persisted per stage)."""

    def __init__(self, standins: Iterable[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.standins = nn.ModuleList(standins)
        self.head = head


def output_module(model: BlockModel, k: int) -> OutputModule:
    """O_k for stage k; at k = S it wraps the model's own head (no stand-ins)."""
    check_block_index(model, k, "stage")
    if k == model.num_blocks:
        return OutputModule([], model.head)
    spec = cut_spec(model)
    return OutputModule([standin_module(s) for s in spec.standins[k:]], stage_head(model))


class StageOutput(NamedTuple):
    logits: torch.Tensor
    z: torch.Tensor  # flattened output of the last spatial module (real block or stand-in)
    pooled: torch.Tensor  # the pooled feature the head classifies (NeuLite's projection-MLP input)


class StageModel(nn.Module):
    """stem, blocks 1..k (shared with ``model``), stand-ins, head. At k = S: the full model.

    ``output`` is a persisted :class:`OutputModule` (NeuLite's O_k); by default a
    fresh one with stand-ins for every missing block.
    """

    def __init__(self, model: BlockModel, k: int, output: OutputModule | None = None) -> None:
        super().__init__()
        check_block_index(model, k, "stage")
        output = output_module(model, k) if output is None else output
        expected = model.num_blocks - k
        if len(output.standins) not in (0, expected):  # 0: a plain prefix (ProgFed)
            raise ValueError(
                f"stage {k} of {model.arch} takes 0 or {expected} stand-ins, got {len(output.standins)}"
            )
        self.stage = k
        self.stem = model.stem
        self.blocks = nn.ModuleList(model.blocks[:k])
        self.standins = output.standins
        self.head = output.head

    def last_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for module in (*self.blocks, *self.standins):
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last_map(x))

    def forward_all(self, x: torch.Tensor) -> StageOutput:
        last = self.last_map(x)
        return StageOutput(self.head(last), last.flatten(1), pooled_feature(self.head, last))


def prefix_head(model: BlockModel, k: int) -> nn.Module:
    """ProgFed's temporary head after block k: avgpool + Linear(c_k→C) (LN + Linear on CLS for tokens)."""
    check_block_index(model, k)
    if k == model.num_blocks:
        return model.head
    shape = model.block_output_shapes()[k - 1]
    if len(shape) == 3:
        return PoolHead(shape[0], model.num_classes, in_space=None)
    return TokenHead(shape[-1], model.num_classes, in_space=None)


def prefix_model(model: BlockModel, k: int, head: nn.Module | None = None) -> StageModel:
    """Blocks 1..k and a head, no stand-ins (ProgFed); every parameter is the model's own except the head."""
    return StageModel(model, k, OutputModule([], prefix_head(model, k) if head is None else head))


# -------------------------------------------------------------------- DepthFL exits
class SepConv(nn.Module):
    """DepthFL/DARTS separable conv: (dw3×3(stride) → pw1×1 → BN → ReLU) then (dw3×3 → pw1×1(→out) → BN → ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Attention(nn.Module):
    """DepthFL's exit attention: SepConv(stride 2) → BN → ReLU → upsample back → sigmoid, times the input.

    The upsampling goes back to the input's size (×2 on even maps, as in DepthFL;
    also correct on odd ones).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mask = nn.Sequential(
            SepConv(channels, channels, 2), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = F.interpolate(self.mask(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(mask)


class ConvExit(nn.Module):
    """Exit after block k: [attention] → SepConv per later block → avgpool → Linear(c_S→C)."""

    def __init__(
        self, attention: bool, chain: Iterable[ConvStandIn], channels: int, num_classes: int
    ) -> None:
        super().__init__()
        chain = tuple(chain)
        self.attention = Attention(channels) if attention else nn.Identity()
        self.scala = nn.Sequential(*(SepConv(s.in_channels, s.out_channels, s.stride) for s in chain))
        self.head = PoolHead(chain[-1].out_channels if chain else channels, num_classes, in_space=None)
        # [C-DFL] builds the exits inside its ResNet, whose init loop covers them: Kaiming-normal
        # (fan_out) for every conv, BatchNorm γ = 1, β = 0 (spec baselines.md §8.2).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.scala(self.attention(x)))


def exit_head(model: BlockModel, k: int) -> nn.Module:
    """DepthFL's middle exit after block k < S (spec §8.2 for ResNet, §12.5 generically).

    Convolutional models get attention + a SepConv per later block (stride as that
    block's stand-in) + avgpool + Linear; the attention is skipped on a 1×1 map.
    Token models get LayerNorm + Linear on the CLS token.
    """
    check_block_index(model, k)
    if k == model.num_blocks:
        raise ConfigError(f"exit {k} of '{model.arch}' is the model's own head; middle exits are 1..{k - 1}")
    later = cut_spec(model).standins[k:]
    shape = model.block_output_shapes()[k - 1]
    if all(isinstance(s, ConvStandIn) for s in later):
        attention = shape[-1] * shape[-2] > 1
        return ConvExit(attention, later, shape[0], model.num_classes)  # type: ignore[arg-type]
    return TokenHead(shape[-1], model.num_classes, in_space=None)


def exit_heads(model: BlockModel, after: Iterable[int] | None = None) -> nn.ModuleDict:
    """Exits after the given blocks (all middle blocks 1..S−1 by default), keyed by block index."""
    blocks = range(1, model.num_blocks) if after is None else after
    return nn.ModuleDict({str(k): exit_head(model, k) for k in sorted(set(blocks))})


class ExitModel(nn.Module):
    """DepthFL's depth-d model: stem, blocks 1..d, the exits after those blocks, and the head if d = S.

    ``forward`` returns the exits' logits from shallowest to deepest. State-dict
    keys of a depth-d model are a subset of the depth-S model's.
    """

    def __init__(self, model: BlockModel, exits: nn.ModuleDict, depth: int) -> None:
        super().__init__()
        check_block_index(model, depth, "depth")
        self.stem = model.stem
        self.blocks = nn.ModuleList(model.blocks[:depth])
        self.exits = nn.ModuleDict({key: head for key, head in exits.items() if int(key) <= depth})
        self.head = model.head if depth == model.num_blocks else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks, start=1):
            x = block(x)
            if str(index) in self.exits:
                outputs.append(self.exits[str(index)](x))
        if self.head is not None:
            outputs.append(self.head(x))
        return outputs


# ------------------------------------------------------------------------ NeuLite
def coadaptation_scope(model: BlockModel, k: int) -> tuple[str, ...]:
    """Names of the parameters of block k−1 that NeuLite trains with block k (empty for k = 1).

    Names are the model's (and any :class:`StageModel`'s) ``named_parameters`` keys.
    """
    check_block_index(model, k, "stage")
    modules = cut_spec(model).coadapt[k - 1]
    names = tuple(
        f"{module}.{param}"
        for module in modules
        for param, _ in model.get_submodule(module).named_parameters()
    )
    if modules and not names:
        raise PluginError(f"model '{model.arch}': co-adaptation scope of stage {k} has no parameters")
    return names


def stage_trainable(model: BlockModel, stage: StageModel) -> frozenset[str] | None:
    """NeuLite's trainable set T_k of a bare stage model (no projection MLP): all of S_1 (None),
    else block k, the stage's stand-ins and head, and the co-adapted part of block k−1. The one
    definition used where stages are costed without the method (Fig. 6/7 reports, the clock)."""
    k = stage.stage
    if k == 1:
        return None
    block = {f"blocks.{k - 1}.{n}" for n, _ in model.blocks[k - 1].named_parameters()}
    own = {n for n, _ in stage.named_parameters() if n.startswith(("standins.", "head."))}
    return frozenset(block | own | set(coadaptation_scope(model, k)))
