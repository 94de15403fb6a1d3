"""HeteroFL (Diao, Ding, Tarokh, "HeteroFL: Computation and Communication Efficient Federated
Learning for Heterogeneous Clients", ICLR 2021) — spec baselines.md §6.

Each device trains a width-scaled sub-network of the one global model: in every hidden
layer it keeps the *first* ⌈r·c⌉ channels, r being its level from {1, 1/2, 1/4, 1/8, 1/16}.
fedbench gives each device the widest level whose one-step peak fits its memory budget
(the memory model decides, "fix" mode with levels from memory); a device that fits no
level is left out. The server averages every entry over the clients that held it
(overlap-count averaging; classifier rows only over the clients holding the class) and
evaluates the global model at width r_g with static BN (sBN).

Client tricks as [C-HFL] and the spec decide (:mod:`fedbench.kits.width_training`): BatchNorm
with batch statistics only, the Scaler (norm inputs divided by r / r_g while training),
masked cross-entropy, gradient clipping to L2 norm 1. Global width r_g = 1 by default
(what the NeuLite paper evidently evaluated, decision Q9); ``global_rate=max_fit`` uses the
widest level any device was given (the HeteroFL authors' convention).

The engine pieces used: :func:`fedbench.models.slicing.submodel`/``extract``/``positions``,
:func:`fedbench.training.aggregate.overlap_count_average`, :mod:`fedbench.kits.bn`, :mod:`fedbench.kits.widths`.
FedRolex (:mod:`fedbench.methods.fedrolex`) is this class with a rolling index rule.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedbench.api import (
    HETEROFL_LEVELS,
    Assignment,
    BlockModel,
    ClientContext,
    ClientMaskedCrossEntropy,
    ConfigError,
    IndexSets,
    LossFn,
    MaskedCrossEntropy,
    Method,
    Rule,
    RunContext,
    Stream,
    Update,
    Workload,
    add_scaler,
    check_levels,
    cross_entropy_loss,
    extract,
    index_sets,
    layout,
    level_fraction,
    level_label,
    level_model,
    no_level_fits,
    normalized_weights,
    overlap_count_average,
    positions,
    recompute_bn_statistics,
    require_sliceable,
    sbn_indices,
    torch_generator,
    use_batch_statistics,
    widest_levels,
)

log = logging.getLogger(__name__)

GLOBAL_RATES = ("full", "max_fit")
_SBN_KEY = 1  # key of the sBN draws (subsample, augmentation) in the METHOD stream


@dataclass(frozen=True, kw_only=True)
class HeteroFLOptions:
    """``levels``: widths relative to the full model a device may train (widest that fits wins).
    ``global_rate``: ``full`` (r_g = 1, the paper) or ``max_fit`` (widest assigned level).
    ``sbn_max_samples``: cap on the training samples of the sBN pass (None: all shards)."""

    levels: tuple[float, ...] = HETEROFL_LEVELS
    global_rate: str = "full"
    scaler: bool = True
    masked_ce: bool = True
    max_grad_norm: float | None = 1.0
    sbn: bool = True
    sbn_max_samples: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_levels(self.levels, "option 'levels'"))
        if self.global_rate not in GLOBAL_RATES:
            raise ConfigError(
                f"option 'global_rate' ({self.global_rate!r}) must be one of {', '.join(GLOBAL_RATES)}"
            )
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ConfigError(f"option 'max_grad_norm' ({self.max_grad_norm}) must be > 0, or null for no clipping")
        if self.sbn_max_samples is not None and self.sbn_max_samples < 2:
            raise ConfigError(f"option 'sbn_max_samples' ({self.sbn_max_samples}) must be >= 2, or null for all")


@dataclass(frozen=True)
class WidthWork:
    """A device's job: ``level`` r (width relative to the full model) and ``rate`` β = r / r_g
    (its width relative to the global model, the Scaler's divisor)."""

    level: float
    rate: float


class HeteroFL(Method):
    """Static width scaling: device i trains the first ⌈r_i·c⌉ channels of every layer."""

    options_type = HeteroFLOptions
    server_state = ("aggregations",)  # the global model (base) and FedRolex's window position
    rule: ClassVar[Rule] = "prefix"
    method_name: ClassVar[str] = "heterofl"
    # [C-HFL] process_control, CIFAR (spec §6.6): lr 0.1, batch 10, ×0.1 at rounds 150 and 250
    # of 400 (IID) or 300 and 500 of 800 (non-IID): both 3/8 and 5/8 of the run.
    official_train = {"lr": 0.1, "batch_size": 10, "lr_schedule": "multistep", "lr_decay": 0.1,
                      "lr_milestones": (0.375, 0.625)}

    def __init__(self, ctx: RunContext, options: HeteroFLOptions | None = None) -> None:
        super().__init__(ctx, options)
        require_sliceable(self.global_model, self.method_name)
        self.full_width = self.global_model.width
        self.levels: dict[float, Workload] = dict(
            zip(self.options.levels, self.workloads(self.global_model, self.options), strict=True)
        )
        self.device_levels = widest_levels(
            self.options.levels, lambda r: ctx.eligible(self.levels[r].model, None, self.levels[r].loss_fn)
        )
        if not self.device_levels:
            narrowest = self.levels[self.options.levels[-1]]
            need = ctx.memory_report(narrowest.model, None, narrowest.loss_fn).peak_bytes
            budgets = [d.memory_bytes for d in ctx.fleet.devices] if ctx.fleet is not None else []
            raise no_level_fits(self.method_name, self.global_model.arch, self.options.levels[-1], need,
                                budgets, ctx.config.train.batch_size)
        self.global_rate = 1.0 if self.options.global_rate == "full" else max(self.device_levels.values())
        if self.global_rate < 1:
            self.global_model = ctx.build_model(width=self.global_rate * self.full_width)
        self.aggregations = 0  # r of FedRolex: server aggregations completed so far
        self._clients: dict[float, BlockModel] = {}
        self._masked: ClientMaskedCrossEntropy | None = None  # client_loss's, refilled per client
        self._classes: dict[int, torch.Tensor] = {}
        self._class_keys = class_output_keys(self.global_model)
        log.info("%s: global width %s; devices per level %s", self.method_name, level_fraction(self.global_rate),
                 {level_fraction(r): sum(v == r for v in self.device_levels.values()) for r in self.options.levels})

    @classmethod
    def workloads(cls, model: BlockModel, options: Any) -> list[Workload]:
        """One sub-model per level, with the Scaler and the loss its clients train with."""
        found = []
        for level in options.levels:
            narrow = level_model(model, level)
            if options.scaler:
                add_scaler(narrow, level)
            loss = MaskedCrossEntropy(tuple(range(model.num_classes)), model.num_classes) if options.masked_ce else None
            found.append(Workload(f"width {level_fraction(level)}", narrow, None, loss))
        return found

    # -------------------------------------------------------------- hooks
    def assign(self, round_idx: int) -> list[Assignment]:
        chosen = self.ctx.sample_clients(round_idx, list(self.device_levels))
        return [
            Assignment(c, WidthWork(self.device_levels[c], self.device_levels[c] / self.global_rate))
            for c in chosen
        ]

    def index_sets(self, sub: BlockModel) -> IndexSets:
        """Which global channels ``sub`` holds this round (HeteroFL: the first ones)."""
        return index_sets(self.global_model, sub, self.rule, self.aggregations)

    def local_update(self, client: ClientContext) -> Update:
        work: WidthWork = client.work
        sub = self.client_model(work)
        sets = self.index_sets(sub)
        extract(self.global_model, sub, sets)
        # Parameters only: BN running statistics are neither kept nor sent (sBN recomputes them).
        return self.train_client(
            sub, client, loss_fn=self.client_loss(client.client_id),
            max_grad_norm=self.options.max_grad_norm, parameters_only=True, extra={"sets": sets},
        )

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        """Overlap-count averaging (spec §6.5); class rows only over the clients holding the class."""
        if not updates:
            return
        states, where = [], []
        for update in updates:
            state, pos = dict(update.state), positions(self.global_model, update.extra["sets"])
            classes = self.client_classes(update.client_id)
            for key in self._class_keys:
                if key in state:
                    state[key] = state[key].index_select(0, classes.to(state[key].device))
                    pos[key] = (classes, *pos[key][1:])
            states.append(state)
            where.append(pos)
        weights = None
        if self.ctx.config.weighting != "uniform":
            weights = normalized_weights([u.num_samples for u in updates], self.ctx.config.weighting)
        self.global_model.load_state_dict(overlap_count_average(self.global_model.state_dict(), states, where, weights))
        self.aggregations += 1

    def eval_model(self) -> BlockModel:
        """The global model with static BN: statistics recomputed on the clients' training data."""
        if self.options.sbn:
            generator = torch_generator(self.ctx.config.seed, Stream.METHOD, _SBN_KEY, self.aggregations)
            indices = sbn_indices(self.ctx.data.shards, self.options.sbn_max_samples, generator)
            recompute_bn_statistics(
                self.global_model, self.ctx.data.dataset, indices, self.ctx.config.eval_batch_size, generator,
                self.ctx.config.device,
            )
        return self.global_model

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        return width_metrics([u.work.level for u in updates], self.options.levels)

    def device_cost(self, assignment: Assignment, update: Update | None = None) -> Any:
        """The clock's cost: the level's sub-model; its parameters go down and come back up."""
        workload = self.levels[assignment.work.level]
        samples = update.num_samples if update is not None else int(self.ctx.data.shards[assignment.client_id].numel())
        sent = sum(p.numel() * p.element_size() for p in workload.model.parameters())
        return self.ctx.clock.cost(workload.model, samples, None, workload.loss_fn, bytes_down=sent, bytes_up=sent)

    # ------------------------------------------------------------- pieces
    def client_model(self, work: WidthWork) -> BlockModel:
        """A reusable sub-model per level: batch-statistics BN and the Scaler of its rate."""
        if work.level not in self._clients:
            sub = level_model(self.global_model, work.rate, device=self.ctx.device)
            use_batch_statistics(sub)
            if self.options.scaler:
                add_scaler(sub, work.rate)
            self._clients[work.level] = sub
        return self._clients[work.level]

    def client_classes(self, client_id: int) -> torch.Tensor:
        """The labels present in a client's shard (HeteroFL's ``label_split``)."""
        if client_id not in self._classes:
            labels = self.ctx.data.dataset.train_labels[self.ctx.data.shards[client_id]]
            self._classes[client_id] = torch.unique(labels).long()
        return self._classes[client_id]

    def client_loss(self, client_id: int) -> LossFn:
        """Cross-entropy, masked to the client's classes where ``masked_ce`` (one loss whose mask is
        refilled per client, so a CUDA graph per width level serves every client)."""
        if not self.options.masked_ce:
            return cross_entropy_loss
        if self._masked is None:
            self._masked = ClientMaskedCrossEntropy(self.global_model.num_classes)
        return self._masked.for_client(self.client_classes(client_id).tolist(), self.ctx.device)


def class_output_keys(model: BlockModel) -> tuple[str, ...]:
    """State keys of the tensors whose first axis is the class outputs (classifier weight, bias)."""
    state = model.state_dict()
    return tuple(
        key for key, axes in layout(model).items()
        if axes and axes[0] is None and state[key].shape[0] == model.num_classes
        and key.rsplit(".", 1)[-1] in ("weight", "bias")
    )


def width_metrics(levels: Sequence[float], grid: Sequence[float]) -> dict[str, float]:
    """``work/mean_width`` of the devices that trained and ``work/width_<r>`` counts per level."""
    metrics = {"work/mean_width": sum(levels) / len(levels) if levels else 0.0}
    for level in grid:
        metrics[f"work/width_{level_label(level)}"] = float(sum(1 for r in levels if r == level))
    return metrics
