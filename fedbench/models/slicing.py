"""Width slicing by index sets per channel space (HeteroFL spec §6.3, FedRolex §7.2, architectures §12).

Every layer of a model is tagged (:func:`fedbench.models.base.tag`) with the
*channel spaces* its tensor axes live in: a conv's weight is (out space, in
space, kernel, kernel), a BN's γ is (its conv's out space,), SqueezeNet's Fire
output is the concatenation (expand-1×1 space, expand-3×3 space), a ViT qkv
weight has 3·heads segments of the layer's head space. Layers that must agree
(a residual stream, a bypass, the ViT token width) share one space, so they get
one index set. Image channels and class outputs are never sliced (axis None).

A sub-model is described by one index set per space (global channel indices
in sub-model order); from it follow the global positions of every entry of
every tensor, which :func:`extract` reads and :func:`write_back` writes. The
averaging of many clients' slices is the pure function
:func:`fedbench.training.aggregate.overlap_count_average`, fed by :func:`positions`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from fedbench.errors import ConfigError, PluginError
from fedbench.models.base import AXES_ATTR, Axis, BlockModel
from fedbench.tracing.meta import building_on_meta

IndexSets = dict[str, torch.Tensor]  # channel space -> global indices, in sub-model order
Positions = dict[str, tuple[torch.Tensor | None, ...]]  # state key -> global positions per dim (None: all)
Rule = Literal["prefix", "rolling"]


def layout(model: torch.nn.Module) -> dict[str, tuple[Axis, ...]]:
    """The axes of every state-dict tensor of ``model``; an untagged tensor is a plugin error."""
    axes: dict[str, tuple[Axis, ...]] = {}
    for module_name, module in model.named_modules():
        for tensor_name, spec in getattr(module, AXES_ATTR, {}).items():
            axes[f"{module_name}.{tensor_name}" if module_name else tensor_name] = spec
    arch = getattr(model, "arch", type(model).__name__)
    for key, tensor in model.state_dict().items():
        if key not in axes:
            raise PluginError(
                f"model '{arch}': tensor '{key}' has no slicing axes; tag its module (docs/models.md)"
            )
        if len(axes[key]) != tensor.dim():
            raise PluginError(
                f"model '{arch}': tensor '{key}' has {tensor.dim()} dims but {len(axes[key])} axes"
            )
    return {key: axes[key] for key in model.state_dict()}


def space_sizes(model: torch.nn.Module) -> dict[str, int]:
    """Channels of every space, inferred from the axes that hold one space only and checked against all."""
    state, axes = model.state_dict(), layout(model)
    sizes: dict[str, int] = {}
    for key, spec in axes.items():
        for length, ax in zip(state[key].shape, spec, strict=True):
            if ax and len({(s.space, s.inner) for s in ax}) == 1:
                sizes.setdefault(ax[0].space, length // (len(ax) * ax[0].inner))
    for key, spec in axes.items():
        for length, ax in zip(state[key].shape, spec, strict=True):
            if ax is None:
                continue
            missing = [s.space for s in ax if s.space not in sizes]
            if missing or sum(sizes[s.space] * s.inner for s in ax) != length:
                raise PluginError(f"tensor '{key}': axes {ax} do not add up to its length {length}")
    return sizes


def prefix_indices(full_size: int, sub_size: int) -> torch.Tensor:
    """HeteroFL: the first ``sub_size`` channels."""
    return torch.arange(sub_size)


def rolling_indices(full_size: int, sub_size: int, round_idx: int) -> torch.Tensor:
    """FedRolex (paper form): the window {(r + j) mod K : j < L} that moves by one channel per round."""
    return (round_idx + torch.arange(sub_size)) % full_size


def index_sets(full: BlockModel, sub: BlockModel, rule: Rule = "prefix", round_idx: int = 0) -> IndexSets:
    """One index set per channel space of ``full`` for the narrower ``sub`` (same architecture)."""
    full_sizes, sub_sizes = space_sizes(full), space_sizes(sub)
    if full_sizes.keys() != sub_sizes.keys():
        raise ConfigError(f"cannot slice '{full.arch}' into '{sub.arch}': their layers differ")
    sets: IndexSets = {}
    for space, full_size in full_sizes.items():
        size = sub_sizes[space]
        if size > full_size:
            raise ConfigError(
                f"sub-model layer '{space}' ({size}) is wider than the full model's ({full_size})"
            )
        if rule == "prefix":
            sets[space] = prefix_indices(full_size, size)
        elif rule == "rolling":
            sets[space] = rolling_indices(full_size, size, round_idx)
        else:
            raise ConfigError(
                f"unknown slicing rule {rule!r}; use 'prefix' (HeteroFL) or 'rolling' (FedRolex)"
            )
    return sets


def positions(full: BlockModel, sets: Mapping[str, torch.Tensor]) -> Positions:
    """Global positions, per dimension, of every entry of every tensor of the sub-model ``sets`` describes."""
    sizes, found = space_sizes(full), {}
    for key, spec in layout(full).items():
        found[key] = tuple(None if ax is None else _axis_positions(ax, sets, sizes) for ax in spec)
    return found


def _axis_positions(ax: Axis, sets: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> torch.Tensor:
    parts, offset = [], 0
    for segment in ax or ():
        idx = sets[segment.space].long()
        inner = torch.arange(segment.inner)
        parts.append(offset + (idx[:, None] * segment.inner + inner).flatten())
        offset += sizes[segment.space] * segment.inner
    return torch.cat(parts)


def gather(tensor: torch.Tensor, where: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """The entries of ``tensor`` at the given per-dimension positions."""
    for dim, idx in enumerate(where):
        if idx is not None:
            tensor = tensor.index_select(dim, idx.to(tensor.device))
    return tensor


def grid(tensor: torch.Tensor, where: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, ...]:
    """Broadcastable index tensors addressing the sub-block ``where`` of ``tensor`` (for ``t[grid] = ...``)."""
    rank = tensor.dim()
    index = []
    for dim, (size, idx) in enumerate(zip(tensor.shape, where, strict=True)):
        idx = torch.arange(size) if idx is None else idx
        shape = [1] * rank
        shape[dim] = -1
        index.append(idx.to(tensor.device).view(shape))
    return tuple(index)


@torch.no_grad()
def extract(full: BlockModel, sub: BlockModel, sets: Mapping[str, torch.Tensor]) -> BlockModel:
    """Load the slice ``sets`` of ``full`` into ``sub`` (every tensor of ``sub``); returns ``sub``."""
    where, source = positions(full, sets), full.state_dict()
    for key, target in sub.state_dict().items():
        if key not in source:
            raise ConfigError(f"sub-model tensor '{key}' does not exist in the full '{full.arch}' model")
        value = gather(source[key], where[key]) if target.dim() else source[key]
        if value.shape != target.shape:
            raise ConfigError(
                f"slice of '{key}' has shape {tuple(value.shape)}, sub-model has {tuple(target.shape)}"
            )
        target.copy_(value)
    return sub


@torch.no_grad()
def write_back(full: BlockModel, sub: BlockModel, sets: Mapping[str, torch.Tensor]) -> None:
    """Write every tensor of ``sub`` into ``full`` at the positions of the slice ``sets``."""
    where, target = positions(full, sets), full.state_dict()
    for key, value in sub.state_dict().items():
        if value.dim() == 0:
            target[key].copy_(value)
        else:
            target[key][grid(target[key], where[key])] = value.to(target[key].dtype)


def submodel(
    full: BlockModel, width: float, rule: Rule = "prefix", round_idx: int = 0
) -> tuple[BlockModel, IndexSets]:
    """A width-``width`` copy of ``full`` holding its slice, and the index sets it was cut by.

    ``width`` is the sub-model's own multiplier (as given to the builder), in
    (0, full.width]. The sub-model is built on the meta device, so no random
    initialisation is spent on weights that are overwritten anyway.
    """
    from fedbench.models import build_model  # lazy: fedbench.models imports this module to build its zoo

    if not 0 < width <= full.width:
        raise ConfigError(
            f"sub-model width ({width}) must be in (0, {full.width}] for this '{full.arch}' model"
        )
    device = next(full.parameters()).device
    with building_on_meta():
        if full.builder is not None:
            sub = full.builder(full.input_shape, full.num_classes, width=width)
        else:
            sub = build_model(full.arch, full.input_shape, full.num_classes, width=width)
    sub = sub.to_empty(device=device)
    sets = index_sets(full, sub, rule, round_idx)
    return extract(full, sub, sets), sets
