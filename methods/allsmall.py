"""AllSmall — defined in ProFL (Wu et al., arXiv 2404.13349) and restated in NeuLite; spec
baselines.md §5 and decision Q16.

Shrink the width of the whole global model until the device with the *smallest* memory
can train it, then run plain FedAvg with every device on that small model: fully
inclusive (PR = 100 %), with capacity limited by the weakest device.
r_all = max{ r ∈ grid : mem(model at width r) ≤ min_i M_i }, grid = HeteroFL's levels
{1, 1/2, 1/4, 1/8, 1/16} by default; ``grid=continuous`` searches the largest multiple of
1/64 in (0, 1] by bisection on the memory model. Clients train with plain cross-entropy
and standard BatchNorm (running statistics averaged with the weights); no Scaler, no
masking (everybody has the same model). If even the narrowest width fits no device's
memory, the run fails before round 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedbench.api import (
    CONTINUOUS_STEPS,
    HETEROFL_LEVELS,
    Assignment,
    BlockModel,
    ConfigError,
    Method,
    RunContext,
    Update,
    Workload,
    check_levels,
    largest_fitting,
    level_fraction,
    level_model,
    no_level_fits,
    require_sliceable,
)
from fedbench.methods.heterofl import width_metrics

log = logging.getLogger(__name__)

GRIDS = ("levels", "continuous")


@dataclass(frozen=True, kw_only=True)
class AllSmallOptions:
    """``grid``: ``levels`` (pick from ``levels``) or ``continuous`` (multiples of 1/64)."""

    grid: str = "levels"
    levels: tuple[float, ...] = HETEROFL_LEVELS

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_levels(self.levels, "option 'levels'"))
        if self.grid not in GRIDS:
            raise ConfigError(f"option 'grid' ({self.grid!r}) must be one of {', '.join(GRIDS)}")


class AllSmall(Method):
    """FedAvg for everyone on the widest model the smallest device can train."""

    options_type = AllSmallOptions

    def __init__(self, ctx: RunContext, options: AllSmallOptions | None = None) -> None:
        super().__init__(ctx, options)
        require_sliceable(self.global_model, "allsmall")
        self.width_level = self.choose_level(self.global_model)
        if self.width_level < 1:
            self.global_model = ctx.build_model(width=self.width_level * self.global_model.width)
        log.info("allsmall: every device trains width %s", level_fraction(self.width_level))

    @classmethod
    def workloads(cls, model: BlockModel, options: Any) -> list[Workload]:
        return [Workload(f"width {level_fraction(r)}", level_model(model, r)) for r in options.levels]

    def choose_level(self, full: BlockModel) -> float:
        """r_all: the widest grid width whose one-step peak fits every device (the smallest one)."""
        ctx = self.ctx

        def fits_everyone(level: float) -> bool:
            return len(ctx.eligible(level_model(full, level))) == ctx.num_clients

        if self.options.grid == "continuous":
            found = largest_fitting(fits_everyone)
            narrowest = 1.0 / CONTINUOUS_STEPS
        else:
            found = next((r for r in self.options.levels if fits_everyone(r)), None)
            narrowest = self.options.levels[-1]
        if found is None:
            need = ctx.memory_report(level_model(full, narrowest)).peak_bytes
            budgets = [d.memory_bytes for d in ctx.fleet.devices] if ctx.fleet is not None else []
            raise no_level_fits("allsmall", full.arch, narrowest, need, budgets, ctx.config.train.batch_size)
        return found

    def assign(self, round_idx: int) -> list[Assignment]:
        return [Assignment(c, self.width_level) for c in self.ctx.sample_clients(round_idx)]

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        grid = (self.width_level,) if self.options.grid == "continuous" else self.options.levels
        return width_metrics([self.width_level] * len(updates), grid)
