"""The sections of a run config: data, model, local training, fleet, tracking.

Each is a frozen dataclass that validates itself on construction, so a bad value fails before
round 1 with a message that names the field, the value and the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fedbench.config.checks import require, require_one_of

DIRICHLET_VARIANTS = ("per-sample", "cumsum")
# Upper bounds on sizes that are allocated up front, so that a typo (an extra zero or three) is one
# line before anything is allocated instead of a MemoryError minutes later. Every client's device
# profile, shard index and selection state live in memory for the whole run, and no federated data
# set fedbench loads has more training samples than this (a client needs at least one).
MAX_CLIENTS = 1_000_000
# nHSIC builds n x n kernel matrices over the n = per-class x classes probe images (the spec uses
# 200 per class); at 1,000 per class and 10 classes one matrix is already 10^8 entries.
MAX_INFO_PLANE = 1_000
# The most rounds a run may ask for: the paper's protocol is 1,600; the evaluation schedule and
# the logs grow with the count, so a typo of a few zeros is refused instead of filling memory.
MAX_ROUNDS = 1_000_000


# The built-in partitioners, which read only their own settings (plugins may read any).
BUILTIN_PARTITIONS = frozenset({"iid", "dirichlet", "shards", "natural", "writer-groups"})
# The built-in fleet profiles that do not read fleet.low_mb / high_mb.
BUDGETS_IGNORED_BY = frozenset({"homogeneous", "paper", "relative"})


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which data set, where it lives, and how it is split across clients."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    partition: str = "dirichlet"
    alpha: float = 0.5
    num_clients: int = 100
    # `shards` partitioner: label-sorted shards per client (FedAvg paper: 2).
    shards_per_client: int = 2
    # `dirichlet` partitioner: "per-sample" (NeuLite's code) or "cumsum" (DepthFL's); spec common.md §1.3.
    dirichlet_variant: str = "per-sample"

    def __post_init__(self) -> None:
        require(self.num_clients >= 1, f"data.num_clients ({self.num_clients}) must be >= 1")
        require(
            self.num_clients <= MAX_CLIENTS,
            f"data.num_clients ({self.num_clients}) is above {MAX_CLIENTS:,}, the most clients fedbench simulates "
            "(every client's device, shard and selection state stay in memory); lower --clients",
        )
        require(
            self.alpha > 0 and math.isfinite(self.alpha),
            f"data.alpha ({self.alpha}) must be > 0 (smaller is more non-IID; try 0.5)",
        )
        require(
            self.shards_per_client >= 1,
            f"data.shards_per_client ({self.shards_per_client}) must be >= 1 (the FedAvg paper uses 2)",
        )
        require(
            self.dirichlet_variant in DIRICHLET_VARIANTS,
            f"data.dirichlet_variant ({self.dirichlet_variant!r}) must be one of {', '.join(DIRICHLET_VARIANTS)}",
        )
        # A setting another partitioner reads would change the run key and train the same thing
        # (a grid of partition x alpha would run its IID cell once per alpha): refused, not dropped.
        # Only the built-in partitioners are known to ignore them; a plugin may read any of them.
        for name, owner in (("alpha", "dirichlet"), ("dirichlet_variant", "dirichlet"), ("shards_per_client", "shards")):
            value = getattr(self, name)
            ignored = self.partition in BUILTIN_PARTITIONS and self.partition != owner
            require(not ignored or value == getattr(DataConfig, name),
                    f"data.{name} ({value}) only applies to partition {owner} (got {self.partition}); drop it, "
                    f"or in a grid pair each partition with its own settings as cases")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which architecture and at what width multiplier."""

    name: str = "cnn"
    width: float = 1.0

    def __post_init__(self) -> None:
        require(0 < self.width <= 1, f"model.width ({self.width}) must be in (0, 1]")


FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: weights and optimiser factors live there


# The smallest training batch. A batch of one sample gives BatchNorm a single value per channel
# wherever a feature map is 1×1 (VGG11_bn's last block at its smallest input, 16×16), which it
# cannot train on, and nHSIC is undefined on it; so every model skips such a batch alike and
# --batch-size 1 would train nothing.
MIN_TRAIN_BATCH = 2


# How the local learning rate changes over a run's rounds (TrainConfig.lr_at). The paper's common
# setting is constant; the others are the baselines' own codes' (spec decisions Q7, `official`).
LR_SCHEDULES = ("constant", "exponential", "multistep", "cosine")
# The local optimizers: SGD (the paper's, with momentum) and Adam (fedbench's LocalAdam keeps
# torch.optim.Adam's default betas and takes no momentum).
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Local training on a device: SGD with the paper's defaults (spec common.md §1.3).

    The learning rate of round t (1-based) of R follows ``lr_schedule``:
    ``constant`` lr; ``exponential`` lr·decay^(t−1) (DepthFL's code); ``multistep`` lr·decay^n,
    n the milestones already passed, each milestone a fraction of R so one setting fits every run
    length (HeteroFL's MultiStepLR); ``cosine`` lr·(1 + cos(π(t−1)/(R−1)))/2
    (ProgFed's). Every schedule is floored at ``lr_min``.
    """

    local_epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "constant"
    lr_decay: float = 0.1
    lr_milestones: tuple[float, ...] = ()
    lr_min: float = 0.0

    def __post_init__(self) -> None:
        require(self.local_epochs >= 1, f"train.local_epochs ({self.local_epochs}) must be >= 1")
        require(self.batch_size >= MIN_TRAIN_BATCH,
                 f"train.batch_size ({self.batch_size}) must be >= {MIN_TRAIN_BATCH}: a batch of one sample "
                 "trains nothing (BatchNorm needs two); the paper uses 64")
        require(self.lr > 0, f"train.lr ({self.lr}) must be > 0")
        require(0 <= self.momentum < 1, f"train.momentum ({self.momentum}) must be in [0, 1)")
        require(self.weight_decay >= 0, f"train.weight_decay ({self.weight_decay}) must be >= 0")
        for name in ("lr", "weight_decay"):  # training runs in float32: a larger factor cannot even be applied
            value = getattr(self, name)
            require(value <= FLOAT32_MAX, f"train.{name} ({value}) must be a finite number below {FLOAT32_MAX:.1e} "
                     "(the float32 limit); the paper's setting is lr 0.01, weight decay 5e-4")
        require_one_of("train.optimizer", self.optimizer, OPTIMIZERS, "an optimizer")
        require(self.optimizer == "sgd" or self.momentum == TrainConfig.momentum,
                 f"train.momentum ({self.momentum}) is SGD's; adam uses its own moments (betas 0.9, 0.999): "
                 "drop the momentum setting or use optimizer sgd")
        self._check_schedule()

    def _check_schedule(self) -> None:
        require_one_of("train.lr_schedule", self.lr_schedule, LR_SCHEDULES, "a schedule")
        require(0 < self.lr_decay <= 1, f"train.lr_decay ({self.lr_decay}) must be in (0, 1]: the factor the lr is "
                 "multiplied by (each round for exponential, at each milestone for multistep)")
        require(0 <= self.lr_min <= self.lr, f"train.lr_min ({self.lr_min}) must be in [0, train.lr = {self.lr}]")
        require(self.lr_schedule != "constant" or self.lr_min == 0,
                 f"train.lr_min ({self.lr_min}) only applies to a schedule that lowers the lr (got constant); "
                 "drop it or set train.lr_schedule")
        milestones = self.lr_milestones
        require(all(0 < m < 1 for m in milestones) and list(milestones) == sorted(set(milestones)),
                 f"train.lr_milestones ({list(milestones)}) must be increasing fractions of the run's rounds in "
                 "(0, 1), e.g. [0.375, 0.625] for rounds 150 and 250 of 400")
        require(self.lr_schedule == "multistep" or not milestones,
                 f"train.lr_milestones ({list(milestones)}) only apply to lr_schedule multistep (got "
                 f"{self.lr_schedule}); drop them or set train.lr_schedule: multistep")
        require(self.lr_schedule != "multistep" or bool(milestones),
                 "train.lr_schedule multistep needs train.lr_milestones, fractions of the run's rounds, e.g. [0.5, 0.75]")
        require(self.lr_schedule in ("exponential", "multistep") or self.lr_decay == TrainConfig.lr_decay,
                 f"train.lr_decay ({self.lr_decay}) only applies to lr_schedule exponential or multistep (got "
                 f"{self.lr_schedule}); drop it or pick one of those schedules")

    def lr_at(self, round_idx: int, rounds: int) -> float:
        """The learning rate of round ``round_idx`` (0-based) of a run of ``rounds`` rounds."""
        if self.lr_schedule == "exponential":
            lr = self.lr * self.lr_decay ** round_idx
        elif self.lr_schedule == "multistep":
            passed = sum(1 for m in self.lr_milestones if milestone_round(m, rounds) <= round_idx)
            lr = self.lr * self.lr_decay ** passed
        elif self.lr_schedule == "cosine":
            progress = round_idx / (rounds - 1) if rounds > 1 else 0.0
            lr = self.lr * (1 + math.cos(math.pi * progress)) / 2
        else:
            lr = self.lr
        return max(lr, self.lr_min)

    def at_round(self, round_idx: int, rounds: int) -> TrainConfig:
        """This setting with round ``round_idx``'s learning rate as a constant ``lr``: what one
        round's local SGD runs with."""
        if self.lr_schedule == "constant":
            return self
        return dataclasses.replace(self, lr=self.lr_at(round_idx, rounds), lr_schedule="constant",
                                   lr_decay=TrainConfig.lr_decay, lr_milestones=(), lr_min=0.0)


def milestone_round(fraction: float, rounds: int) -> int:
    """The 0-based round from which a multistep milestone at ``fraction`` of ``rounds`` applies:
    PyTorch's MultiStepLR stepped once per round with milestone ``fraction · rounds`` rounded
    half up (150 and 250 of 400 are 0.375 and 0.625)."""
    return math.floor(fraction * rounds + 0.5)


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """The simulated devices: a named profile from the ``fedbench.fleets`` group."""

    profile: str = "homogeneous"
    # `uniform-mb` profile: budgets uniform over the integers [low_mb, high_mb] MiB ([C-ProFL]: 100-900).
    low_mb: int = 100
    high_mb: int = 900

    def __post_init__(self) -> None:
        require(self.low_mb >= 1, f"fleet.low_mb ({self.low_mb}) must be >= 1 (a budget in MiB; try 100)")
        require(
            self.high_mb >= self.low_mb,
            f"fleet.high_mb ({self.high_mb}) must be >= fleet.low_mb ({self.low_mb})",
        )
        require(self.profile not in BUDGETS_IGNORED_BY or (self.low_mb, self.high_mb) == (FleetConfig.low_mb, FleetConfig.high_mb),
                f"fleet.low_mb/high_mb ({self.low_mb}/{self.high_mb}) only apply to the uniform-mb profile (got "
                f"{self.profile}); drop them or use --fleet uniform-mb")


@dataclass(frozen=True, kw_only=True)
class TrackingConfig:
    """Where runs are logged. Not part of the run key: it does not change results."""

    uri: str | None = None
    experiment: str = "fedbench"
    run_name: str | None = None
    enabled: bool = True
    # Write a resumable checkpoint every N finished rounds (0: never). Needs tracking.
    checkpoint_every: int = 1
    # Keep the checkpoint after the run is recorded FINISHED (default: it is removed then).
    keep_checkpoint: bool = False

    def __post_init__(self) -> None:
        require(bool(self.experiment.strip()),
                 f"tracking.experiment ({self.experiment!r}) must be a name, e.g. --experiment mini-table1")
        require(
            self.checkpoint_every >= 0,
            f"tracking.checkpoint_every ({self.checkpoint_every}) must be >= 0 (0 turns checkpoints off)",
        )


# The training fields added after runs were first keyed: left out of the run key at their
# defaults, so earlier runs keep their keys.
LATER_TRAIN_FIELDS = ("optimizer", "lr_schedule", "lr_decay", "lr_milestones", "lr_min")


def train_defaults() -> dict[str, Any]:
    """TrainConfig's defaults as a config's JSON and YAML hold them (lists, not tuples)."""
    return dataclasses.asdict(TrainConfig()) | {"lr_milestones": []}
