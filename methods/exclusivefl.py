"""ExclusiveFL: FedAvg restricted to the devices that can train the full model.

Defined in ProFL (Wu et al., arXiv 2404.13349) and restated in NeuLite as the
simplest memory-aware baseline (spec baselines.md §4): keep the full model and
exclude every device whose budget cannot hold one local training step of it.
E = {i : M_i >= mem(full model, all trainable, B)}; each round min(K, |E|)
devices are drawn uniformly from E; client, server and evaluation are FedAvg's.
PR = |E| / N. If no device fits, the run fails before round 1 (the paper's "NA").
"""

from __future__ import annotations

from fedbench.api import (
    Assignment,
    Method,
    RunContext,
)


class ExclusiveFL(Method):
    """FedAvg on the full model among the devices whose memory holds it."""

    def __init__(self, ctx: RunContext, options: object | None = None) -> None:
        super().__init__(ctx, options)
        self.eligible_ids = ctx.require_eligible(self.global_model)

    def assign(self, round_idx: int) -> list[Assignment]:
        return [Assignment(c) for c in self.ctx.sample_clients(round_idx, self.eligible_ids)]
