"""ProgFed (Wang et al., "ProgFed: Effective, Communication, and Computation Efficient
Federated Learning by Progressive Training", ICML 2022), as specified in spec
baselines.md §11.

Training starts on a shallow prefix of the model (stem + block 1 + a temporary
linear head) and grows by one block every ``update_cycle`` rounds T, at rounds
T, 2T, …, (S−1)T, then trains the full model until the last round. Every
parameter of the current sub-model is trained (no freezing) with plain
cross-entropy; the server averages like FedAvg. Each temporary head is created
with the model and discarded when the model grows.

Under memory budgets (§11.3) stage s samples only devices that fit sub-model s.
If no device fits some stage, the model stops growing at the last stage that
someone can train and that sub-model is reported (``progfed/incomplete`` = 1).
Default T = ⌊R / (2(S−1))⌋: full size at mid-training (spec decision).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fedbench.api import (
    Assignment,
    BlockModel,
    ClientContext,
    ConfigError,
    DeviceCost,
    MemoryBudgetError,
    Method,
    RunContext,
    StageModel,
    Stream,
    Update,
    Workload,
    format_bytes,
    numpy_rng,
    prefix_head,
    prefix_model,
)

HEAD_INIT_KEY = 2  # Stream.MODEL_INIT key of the temporary heads' initialisation


@dataclass(frozen=True, kw_only=True)
class ProgFedOptions:
    """``update_cycle``: rounds per stage T (None: ⌊R / (2(S−1))⌋); ``warmup_rounds``: the first W
    rounds of every grown stage train only the new block and its head (off by default)."""

    update_cycle: int | None = None
    warmup_rounds: int = 0

    def __post_init__(self) -> None:
        if self.update_cycle is not None and self.update_cycle < 1:
            raise ConfigError(f"options.update_cycle ({self.update_cycle}) must be >= 1 round (or unset)")
        if self.warmup_rounds < 0:
            raise ConfigError(f"options.warmup_rounds ({self.warmup_rounds}) must be >= 0 (ProgFed's preset: 25)")


@dataclass(frozen=True)
class StageWork:
    """One device's work in a ProgFed round: sub-model ``stage`` (1-based), maybe in warm-up."""

    stage: int
    warmup: bool = False


def default_update_cycle(rounds: int, num_stages: int) -> int:
    """T = ⌊R / (2(S−1))⌋ (at least 1), so the full model is reached at mid-training."""
    if num_stages < 2:
        return max(rounds, 1)
    return max(rounds // (2 * (num_stages - 1)), 1)


def stage_schedule(rounds: int, num_stages: int, update_cycle: int) -> list[int]:
    """The stage (1-based) of every 0-based round: it grows at rounds T, 2T, …, (S−1)T."""
    return [min(r // update_cycle + 1, num_stages) for r in range(rounds)]


def new_part_names(stage: StageModel) -> frozenset[str]:
    """Parameter names of the stage's newest block and its head (what a warm-up round trains)."""
    wanted = {id(p) for module in (stage.blocks[-1], stage.head) for p in module.parameters()}
    return frozenset(name for name, p in stage.named_parameters() if id(p) in wanted)


def temporary_heads(model: BlockModel) -> nn.ModuleDict:
    """ProgFed's head after each block s < S (the last stage uses the model's own head)."""
    return nn.ModuleDict({str(s): prefix_head(model, s) for s in range(1, model.num_blocks)})


def stage_models(model: BlockModel, heads: nn.ModuleDict) -> dict[int, StageModel]:
    """Sub-model s = blocks 1..s + head_s, sharing ``model``'s modules (training one trains the model)."""
    last = model.num_blocks
    return {s: prefix_model(model, s, heads[str(s)] if s < last else None) for s in range(1, last + 1)}


class ProgFed(Method):
    """Progressive growing: a fixed schedule of ever deeper prefixes, each with a temporary head."""

    options_type = ProgFedOptions
    # [C-PF] CIFAR-10 ResNet18 presets (spec §11.2): batch 50, wd 1e-4,
    # lr_t = max(0.1·(1 + cos(π(t−1)/(R−1)))/2, 1e-6).
    official_train = {"batch_size": 50, "lr": 0.1, "weight_decay": 1e-4, "lr_schedule": "cosine",
                      "lr_min": 1e-6}
    server_state = ("heads",)  # the global model (base) and the temporary heads of the stages

    def __init__(self, ctx: RunContext, options: ProgFedOptions | None = None) -> None:
        super().__init__(ctx, options)
        opts: ProgFedOptions = self.options
        model = self.global_model
        self.num_stages = model.num_blocks
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(numpy_rng(ctx.config.seed, Stream.MODEL_INIT, HEAD_INIT_KEY).integers(2**62)))
            self.heads = temporary_heads(model).to(ctx.device)
        self.stages = stage_models(model, self.heads)
        worker_model, worker_heads = copy.deepcopy((model, self.heads))
        self._workers = stage_models(worker_model, worker_heads)
        self.update_cycle = opts.update_cycle or default_update_cycle(ctx.config.rounds, self.num_stages)
        self.eligible_ids = {s: ctx.eligible(self.stages[s]) for s in self.stages}
        self.warmup_ids = {
            s: ctx.eligible(self.stages[s], new_part_names(self.stages[s])) for s in self.stages if s > 1
        } if opts.warmup_rounds else {}
        self.last_stage = self._last_feasible_stage()
        self.schedule = stage_schedule(ctx.config.rounds, self.num_stages, self.update_cycle)
        self._current = StageWork(1)

    @classmethod
    def workloads(cls, model: BlockModel, options: ProgFedOptions) -> list[Workload]:
        """One workload per stage (plus its warm-up variant when warm-up is on)."""
        stages = stage_models(model, temporary_heads(model))
        found = [Workload(f"stage{s}", stage) for s, stage in stages.items()]
        if options.warmup_rounds:
            found += [
                Workload(f"stage{s}-warmup", stage, new_part_names(stage)) for s, stage in stages.items() if s > 1
            ]
        return found

    def _last_feasible_stage(self) -> int:
        """The deepest stage s such that every stage 1..s has a device that fits it (spec §11.3)."""
        if not self.eligible_ids[1]:
            need = self.ctx.memory_report(self.stages[1]).peak_bytes
            largest = self.ctx.fleet.largest_budget_bytes if self.ctx.fleet is not None else None
            raise MemoryBudgetError(
                f"no device can train ProgFed stage 1 of {self.global_model.arch} (needs {format_bytes(need)} at "
                f"batch {self.ctx.config.train.batch_size}; largest budget {format_bytes(largest or 0)}); "
                "choose a larger --fleet profile or a smaller --batch-size"
            )
        last = 1
        while last < self.num_stages and self.eligible_ids[last + 1]:
            last += 1
        return last

    def work_of(self, round_idx: int) -> StageWork:
        """The round's stage (capped at the last feasible one) and whether it is a warm-up round."""
        planned = self.schedule[round_idx] if round_idx < len(self.schedule) else self.num_stages
        stage = min(planned, self.last_stage)
        first_round = (stage - 1) * self.update_cycle
        warmup = planned == stage > 1 and round_idx - first_round < self.options.warmup_rounds
        return StageWork(stage, warmup and bool(self.warmup_ids.get(stage)))

    # -------------------------------------------------------------- hooks
    def assign(self, round_idx: int) -> list[Assignment]:
        self._current = self.work_of(round_idx)
        pool = (self.warmup_ids if self._current.warmup else self.eligible_ids)[self._current.stage]
        return [Assignment(c, self._current) for c in self.ctx.sample_clients(round_idx, pool)]

    def local_update(self, client: ClientContext) -> Update:
        work: StageWork = client.work
        worker = self._workers[work.stage]
        worker.load_state_dict(self.stages[work.stage].state_dict())
        trainable = new_part_names(worker) if work.warmup else None
        for name, param in worker.named_parameters():
            param.requires_grad_(trainable is None or name in trainable)
        try:
            return self.train_client(worker, client)
        finally:
            for param in worker.parameters():
                param.requires_grad_(True)

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        if updates:
            self.stages[updates[0].work.stage].load_state_dict(self.average(updates))

    def eval_model(self) -> nn.Module:
        """The current sub-model with its current head (the full model once grown)."""
        return self.stages[self._current.stage]

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        return {
            "work/stage": float(self._current.stage),
            "progfed/warmup": float(self._current.warmup),
            "progfed/incomplete": float(self.last_stage < self.num_stages),
        }

    def device_cost(self, assignment: Assignment, update: Update | None = None) -> DeviceCost:
        """Sub-model s (only the new block and head trainable in a warm-up round)."""
        work: StageWork = assignment.work
        stage = self.stages[work.stage]
        samples = update.num_samples if update is not None else int(self.ctx.data.shards[assignment.client_id].numel())
        return self.ctx.clock.cost(stage, samples, new_part_names(stage) if work.warmup else None)
