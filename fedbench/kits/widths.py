"""Width levels and which of them a device's memory holds (AllSmall, HeteroFL, FedRolex).

A *level* r is a width relative to the run's full model: the sub-model at level r is
the same architecture built with multiplier ``r · model.width`` (every hidden width
``ceil(r·W·c)``), which is exactly what the memory model measures and what
:func:`fedbench.models.slicing.submodel` cuts. Which level a device trains comes from
the memory model — the widest level whose one-step peak fits the device's budget
(spec baselines.md §5, §6.2) — never from a fixed mix of levels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction

import torch
from torch import nn

from fedbench.errors import ConfigError, MemoryBudgetError, PluginError
from fedbench.memory.model import format_bytes
from fedbench.models import build_model
from fedbench.models.base import BlockModel
from fedbench.models.slicing import space_sizes
from fedbench.tracing.meta import building_on_meta

# HeteroFL's complexity levels a..e, shrink ratio 1/2 ([C-HFL] `model_split_rate`).
HETEROFL_LEVELS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)
# AllSmall's continuous search: the largest multiple of 1/64 that fits (spec baselines.md §5).
CONTINUOUS_STEPS = 64


def check_levels(levels: Sequence[float], what: str) -> tuple[float, ...]:
    """The levels, widest first, without repeats; a level outside (0, 1] is a :class:`ConfigError`."""
    if not levels:
        raise ConfigError(f"{what} is empty; give at least one width in (0, 1], e.g. 1, 0.5, 0.25")
    for level in levels:
        if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0 < level <= 1:
            raise ConfigError(f"{what} contains {level!r}; every width must be in (0, 1], e.g. 1, 0.5, 0.25")
    return tuple(sorted({float(level) for level in levels}, reverse=True))


def level_label(level: float) -> str:
    """``1``, ``0.5``, ``0.0625``: the level as it appears in metric keys (``work/width_0.5``)."""
    return f"{level:g}"


def level_fraction(level: float) -> str:
    """``1/16``: the level as people write it (log and error messages)."""
    return str(Fraction(level).limit_denominator(1024))


def require_sliceable(model: BlockModel, method: str) -> None:
    """One-line :class:`ConfigError` if ``model`` cannot be cut into narrower sub-models."""

    arch = getattr(model, "arch", type(model).__name__)
    try:
        sizes = space_sizes(model)
    except PluginError as exc:
        raise ConfigError(f"method '{method}' needs a width-sliceable model, but {exc}") from exc
    if not sizes:
        raise ConfigError(
            f"method '{method}' needs a width-sliceable model, but model '{arch}' declares no channel "
            "spaces to slice; tag its layers (docs/models.md) or pick another --model"
        )
    if getattr(model, "builder", None) is None:
        raise ConfigError(
            f"method '{method}' needs a width-sliceable model, but model '{arch}' has no builder to "
            "make narrower copies; build it with fedbench.models.build_model"
        )


def level_model(model: BlockModel, level: float, device: torch.device | str = "meta") -> BlockModel:
    """``model``'s architecture at level ``level`` (multiplier ``level · model.width``), by default
    on the meta device: for the memory model and for sub-model shapes, no weights are drawn. A
    sub-model built on a real device takes ``model``'s layout (run config ``channels_last``)."""

    on_meta = torch.device(device).type == "meta"
    with building_on_meta() if on_meta else torch.device(device):
        if model.builder is not None:
            narrow = model.builder(model.input_shape, model.num_classes, width=level * model.width)
            narrow.builder = model.builder
        else:
            narrow = build_model(model.arch, model.input_shape, model.num_classes, width=level * model.width)
    if not on_meta and is_channels_last(model):
        narrow.to(memory_format=torch.channels_last)
    return narrow


def is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s convolution weights are in the channels-last layout (a weight whose
    layouts coincide, as with one input channel, says nothing)."""
    return any(
        p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in model.parameters()
    )


def widest_levels(
    levels: Sequence[float], eligible_at: Callable[[float], Iterable[int]]
) -> dict[int, float]:
    """Device id -> the widest level it can train; ``eligible_at(level)`` lists the devices that
    fit a level (the memory model's verdict). Devices that fit no level are absent."""
    chosen: dict[int, float] = {}
    for level in sorted(levels, reverse=True):
        for device_id in eligible_at(level):
            chosen.setdefault(int(device_id), level)
    return dict(sorted(chosen.items()))


def largest_fitting(fits: Callable[[float], bool], steps: int = CONTINUOUS_STEPS) -> float | None:
    """The largest multiple of ``1/steps`` in (0, 1] for which ``fits`` holds, by bisection
    (memory grows with width), or None when even ``1/steps`` does not fit."""
    if fits(1.0):
        return 1.0
    low, high = 0, steps - 1  # invariant: low/steps fits (0: nothing yet), nothing above high/steps does
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid / steps):
            low = mid
        else:
            high = mid - 1
    return low / steps if low else None


def no_level_fits(
    method: str, arch: str, level: float, need_bytes: int, budgets: Sequence[int | None], batch_size: int
) -> MemoryBudgetError:
    """The one-line error for a fleet where even the narrowest width fits no device."""
    known = [b for b in budgets if b is not None]
    smallest = format_bytes(min(known)) if known else "unlimited"
    largest = format_bytes(max(known)) if known else "unlimited"
    return MemoryBudgetError(
        f"{method}: even the narrowest width {level_fraction(level)} of {arch} needs "
        f"{format_bytes(need_bytes)} at batch {batch_size}, but the smallest device has {smallest} "
        f"(largest {largest}); add a narrower width, lower --batch-size or choose a larger --fleet profile"
    )
