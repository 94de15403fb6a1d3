"""RunConfig: everything that defines a run, as one frozen dataclass tree.

The tree is built from defaults, then a YAML file, then command-line overrides,
and validated on construction so that a bad value fails before round 1 with a
message that names the field, the value and the allowed range. Its canonical
JSON form is hashed into the *run key* that sweeps use to skip finished runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import math
import re
import types
import typing
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fedbench import registry
from fedbench.errors import ConfigError, FedbenchError

log = logging.getLogger(__name__)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_one_of(path: str, value: Any, allowed: tuple[str, ...], what: str, more: str = "") -> None:
    """``value`` is one of ``allowed``, or a one-line error naming the closest one and all of them."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"{path} ({value!r}) is not {what}{hint}; known: {', '.join(allowed)}{more}")


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
        _require(self.num_clients >= 1, f"data.num_clients ({self.num_clients}) must be >= 1")
        _require(
            self.num_clients <= MAX_CLIENTS,
            f"data.num_clients ({self.num_clients}) is above {MAX_CLIENTS:,}, the most clients fedbench simulates "
            "(every client's device, shard and selection state stay in memory); lower --clients",
        )
        _require(
            self.alpha > 0 and math.isfinite(self.alpha),
            f"data.alpha ({self.alpha}) must be > 0 (smaller is more non-IID; try 0.5)",
        )
        _require(
            self.shards_per_client >= 1,
            f"data.shards_per_client ({self.shards_per_client}) must be >= 1 (the FedAvg paper uses 2)",
        )
        _require(
            self.dirichlet_variant in DIRICHLET_VARIANTS,
            f"data.dirichlet_variant ({self.dirichlet_variant!r}) must be one of {', '.join(DIRICHLET_VARIANTS)}",
        )


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Which architecture and at what width multiplier."""

    name: str = "cnn"
    width: float = 1.0

    def __post_init__(self) -> None:
        _require(0 < self.width <= 1, f"model.width ({self.width}) must be in (0, 1]")


_NO_DEFAULT = object()  # an option without a default always counts as set
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: weights and optimiser factors live there


# The smallest training batch: BatchNorm cannot train on one sample (nor nHSIC measure it), so a
# batch of one is skipped and --batch-size 1 would train nothing.
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
        _require(self.local_epochs >= 1, f"train.local_epochs ({self.local_epochs}) must be >= 1")
        _require(self.batch_size >= MIN_TRAIN_BATCH,
                 f"train.batch_size ({self.batch_size}) must be >= {MIN_TRAIN_BATCH}: a batch of one sample "
                 "trains nothing (BatchNorm needs two); the paper uses 64")
        _require(self.lr > 0, f"train.lr ({self.lr}) must be > 0")
        _require(0 <= self.momentum < 1, f"train.momentum ({self.momentum}) must be in [0, 1)")
        _require(self.weight_decay >= 0, f"train.weight_decay ({self.weight_decay}) must be >= 0")
        for name in ("lr", "weight_decay"):  # training runs in float32: a larger factor cannot even be applied
            value = getattr(self, name)
            _require(value <= FLOAT32_MAX, f"train.{name} ({value}) must be a finite number below {FLOAT32_MAX:.1e} "
                     "(the float32 limit); the paper's setting is lr 0.01, weight decay 5e-4")
        _require_one_of("train.optimizer", self.optimizer, OPTIMIZERS, "an optimizer")
        _require(self.optimizer == "sgd" or self.momentum == TrainConfig.momentum,
                 f"train.momentum ({self.momentum}) is SGD's; adam uses its own moments (betas 0.9, 0.999): "
                 "drop the momentum setting or use optimizer sgd")
        self._check_schedule()

    def _check_schedule(self) -> None:
        _require_one_of("train.lr_schedule", self.lr_schedule, LR_SCHEDULES, "a schedule")
        _require(0 < self.lr_decay <= 1, f"train.lr_decay ({self.lr_decay}) must be in (0, 1]: the factor the lr is "
                 "multiplied by (each round for exponential, at each milestone for multistep)")
        _require(0 <= self.lr_min <= self.lr, f"train.lr_min ({self.lr_min}) must be in [0, train.lr = {self.lr}]")
        _require(self.lr_schedule != "constant" or self.lr_min == 0,
                 f"train.lr_min ({self.lr_min}) only applies to a schedule that lowers the lr (got constant); "
                 "drop it or set train.lr_schedule")
        milestones = self.lr_milestones
        _require(all(0 < m < 1 for m in milestones) and list(milestones) == sorted(set(milestones)),
                 f"train.lr_milestones ({list(milestones)}) must be increasing fractions of the run's rounds in "
                 "(0, 1), e.g. [0.375, 0.625] for rounds 150 and 250 of 400")
        _require(self.lr_schedule == "multistep" or not milestones,
                 f"train.lr_milestones ({list(milestones)}) only apply to lr_schedule multistep (got "
                 f"{self.lr_schedule}); drop them or set train.lr_schedule: multistep")
        _require(self.lr_schedule != "multistep" or bool(milestones),
                 "train.lr_schedule multistep needs train.lr_milestones, fractions of the run's rounds, e.g. [0.5, 0.75]")
        _require(self.lr_schedule in ("exponential", "multistep") or self.lr_decay == TrainConfig.lr_decay,
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
        _require(self.low_mb >= 1, f"fleet.low_mb ({self.low_mb}) must be >= 1 (a budget in MiB; try 100)")
        _require(
            self.high_mb >= self.low_mb,
            f"fleet.high_mb ({self.high_mb}) must be >= fleet.low_mb ({self.low_mb})",
        )


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
        _require(bool(self.experiment.strip()),
                 f"tracking.experiment ({self.experiment!r}) must be a name, e.g. --experiment mini-table1")
        _require(
            self.checkpoint_every >= 0,
            f"tracking.checkpoint_every ({self.checkpoint_every}) must be >= 0 (0 turns checkpoints off)",
        )


# The training presets (RunConfig.preset; docs/protocol.md).
PRESETS = ("paper", "official")
# The training fields added after runs were first keyed: left out of the run key at their
# defaults, so earlier runs keep their keys.
LATER_TRAIN_FIELDS = ("optimizer", "lr_schedule", "lr_decay", "lr_milestones", "lr_min")


def train_defaults() -> dict[str, Any]:
    """TrainConfig's defaults as a config's JSON and YAML hold them (lists, not tuples)."""
    return dataclasses.asdict(TrainConfig()) | {"lr_milestones": []}

WEIGHTINGS = ("uniform", "samples")
# How a round's local updates run (fedbench/execution/executors.py).
EXECUTORS = ("serial", "process", "ray")
# RunConfig fields that decide where work runs, never what it computes: not in the run key.
EXECUTION_FIELDS = ("executor", "workers", "executor_threads", "resident", "cuda_graphs")
# Compute devices a run may use (RunConfig.device).
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?")


class FrozenOptions(dict):
    """A read-only dict for a method's options, so the whole RunConfig stays immutable."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("RunConfig.options is read-only; use dataclasses.replace to change it")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]

    def __copy__(self) -> FrozenOptions:
        return self

    def __deepcopy__(self, memo: dict) -> FrozenOptions:
        return self

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return FrozenOptions, (dict(self),)  # pickle rebuilds it whole (its items cannot be set one by one)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One run. ``options`` holds the method's own options (validated by the method)."""

    method: str = "neulite"
    options: Mapping[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Training values set as a whole (docs/protocol.md): `paper` (the paper's common setting for
    # every method) or `official` (each method's own code's, Method.official_train); None: the
    # values given. Applied by make_config between the config file and the overrides; a label
    # afterwards, so not part of the run key (the values it set are).
    preset: str | None = None
    rounds: int = 20
    clients_per_round: int = 10
    eval_every: int = 1
    eval_batch_size: int = 1024
    # Fig. 2: on evaluation rounds log nHSIC(X; Z_b) and nHSIC(Y; Z_b) of every block output on a
    # fixed probe of this many test images per class (spec: 200); 0: off.
    info_plane: int = 0
    weighting: str = "uniform"
    seed: int = 42
    threads: int = 2
    # Where a round's local updates run (docs/executors.md): `serial` in this process, `process`
    # in `workers` worker processes, `ray` in `workers` Ray actors, each with `executor_threads`
    # torch threads (default: threads // workers; serial: threads). Not part of the run key.
    executor: str = "serial"
    workers: int = 2
    executor_threads: int | None = None
    # Where training, aggregation and evaluation compute: `cpu`, `cuda` or `cuda:N` (docs/gpu.md).
    # The memory model's meta runs stay off it. Part of the run key when not `cpu`: a GPU changes
    # the arithmetic, hence the result.
    device: str = "cpu"
    # With a GPU device: the data set (as uint8), the global and client models and the server's
    # aggregation stay on the GPU for the whole run. False: the server keeps everything on the CPU
    # and each client's model goes to the GPU and back (the simpler path, kept to compare against).
    # Not part of the run key: both compute the same thing.
    resident: bool = True
    # On a resident GPU run: replay each client's full-size local steps from a captured CUDA graph
    # (fedbench/training/graphs.py), for the losses marked safe to replay. The same kernels, so not
    # part of the run key.
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        # Freeze the options mapping so the whole tree is immutable and hashable in spirit.
        object.__setattr__(self, "options", FrozenOptions(self.options))
        if self.preset is not None:
            _require_one_of("preset", self.preset, PRESETS, "a preset", " (docs/protocol.md)")
        _require(self.rounds >= 1, f"rounds ({self.rounds}) must be >= 1")
        _require(self.rounds <= MAX_ROUNDS,
                 f"rounds ({self.rounds:,}) is above {MAX_ROUNDS:,}, the most a run may ask for; the paper uses 1,600")
        _require(
            self.clients_per_round >= 1,
            f"clients_per_round ({self.clients_per_round}) must be >= 1",
        )
        _require(
            self.clients_per_round <= self.data.num_clients,
            f"clients_per_round ({self.clients_per_round}) exceeds num_clients "
            f"({self.data.num_clients}); lower --clients-per-round or raise --clients",
        )
        _require(self.eval_every >= 1, f"eval_every ({self.eval_every}) must be >= 1")
        _require(self.eval_batch_size >= 1, f"eval_batch_size ({self.eval_batch_size}) must be >= 1")
        _require(
            self.info_plane >= 0,
            f"info_plane ({self.info_plane}) must be >= 0 (probe images per class; 0 turns it off, the spec uses 200)",
        )
        _require(
            self.info_plane <= MAX_INFO_PLANE,
            f"info_plane ({self.info_plane}) is above {MAX_INFO_PLANE:,} probe images per class: nHSIC holds "
            "n x n kernel matrices over all probe images; the spec uses 200",
        )
        _require(
            self.weighting in WEIGHTINGS,
            f"weighting ({self.weighting!r}) must be one of {', '.join(WEIGHTINGS)}",
        )
        _require(self.seed >= 0, f"seed ({self.seed}) must be >= 0")
        _require(self.threads >= 1, f"threads ({self.threads}) must be >= 1")
        if self.executor not in EXECUTORS:
            close = difflib.get_close_matches(self.executor, EXECUTORS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown executor '{self.executor}'{hint}; known: {', '.join(EXECUTORS)}")
        _require(self.workers >= 1, f"workers ({self.workers}) must be >= 1 (worker processes or Ray actors)")
        _require(
            self.executor_threads is None or self.executor_threads >= 1,
            f"executor_threads ({self.executor_threads}) must be >= 1, or unset for threads // workers",
        )
        _require(
            DEVICE_PATTERN.fullmatch(self.device) is not None,
            f"device ({self.device!r}) must be cpu, cuda or cuda:N (e.g. cuda:0)",
        )
        _require(
            self.device == "cpu" or self.executor != "ray",
            f"device {self.device} runs with the serial or process executor (got executor 'ray'); for several "
            "trainers on one GPU use --executor process --workers K, for GPU cells on a Ray cluster "
            "`fedbench sweep GRID --executor ray` (docs/gpu.md)",
        )
        _require(
            not self.cuda_graphs or (self.device != "cpu" and self.resident),
            f"cuda_graphs needs the resident GPU path (got device {self.device}"
            f"{', resident=false' if not self.resident else ''}); use --device cuda, or drop --cuda-graphs",
        )
        _require(
            self.device == "cpu" or self.executor == "serial" or self.resident,
            f"--executor {self.executor} on device {self.device} needs the resident GPU path; drop resident=false",
        )

    # ----------------------------------------------------------------- views
    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/JSON-ready) of the whole tree."""
        out = dataclasses.asdict(self, dict_factory=dict)
        out["options"] = dict(self.options)
        out["train"]["lr_milestones"] = list(self.train.lr_milestones)  # YAML and JSON have lists
        return out

    def flat_params(self) -> dict[str, str]:
        """Dotted keys -> string values, for MLflow params."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, Mapping):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), sub)
            else:
                flat[prefix] = "" if value is None else str(value)

        walk("", self.to_dict())
        return flat

    def resolved_options(self) -> dict[str, Any]:
        """The method's options with its defaults filled in and values normalised (``mu: 1`` is
        ``1.0``, tuples are lists), so ``{}`` and ``{mu: 0.01}`` (the default) are the same run.
        As given when the method cannot be loaded (the run will fail on that, not here)."""
        return self._options_and_defaults()[0]

    def options_differing_from_defaults(self) -> dict[str, Any]:
        """The resolved options that differ from the method's defaults: what the run key hashes, so
        ``{}`` and ``{mu: 0.01}`` (the default) are one run, and runs keyed before options were
        resolved keep their keys."""
        resolved, defaults = self._options_and_defaults()
        return {k: v for k, v in resolved.items() if defaults.get(k, _NO_DEFAULT) != v}

    def _options_and_defaults(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(options with defaults filled in, the defaults), both normalised as JSON would; the options
        as given and no defaults when the method or its options type cannot be loaded."""
        try:
            options_type = getattr(registry.load("methods", self.method), "options_type", None)
            if not dataclasses.is_dataclass(options_type):
                return dict(self.options), {}
            parsed = build_dataclass(options_type, dict(self.options), path="options")
            defaults = build_dataclass(options_type, {}, path="options")
        except (FedbenchError, TypeError):
            return dict(self.options), {}
        return _as_json(parsed), _as_json(defaults)

    def method_tags(self) -> dict[str, str]:
        """Tags that describe the run's method rather than its settings:
        ``fedbench.ignores_memory`` for a method that declares it (:attr:`Method.ignores_memory`).
        None when the method cannot be loaded (a failed run is still recorded)."""
        try:
            method = registry.load("methods", self.method)
        except FedbenchError:
            return {}
        return {"fedbench.ignores_memory": "true"} if getattr(method, "ignores_memory", False) is True else {}

    def option_params(self) -> dict[str, str]:
        """``options.<name>`` MLflow params for every option of the run's method, defaults included and
        values normalised (``mu=1`` -> ``1.0``, tuples as ``[a, b]``), so reports can group runs by an
        option whether or not it was set. The options as given when the method cannot be loaded (a
        failed run is still recorded)."""
        flat = dataclasses.replace(self, options=FrozenOptions(self.resolved_options())).flat_params()
        return {key: value for key, value in flat.items() if key.startswith("options.")}

    @property
    def run_key(self) -> str:
        """Stable hash of everything that can change a result (not where data or logs live)."""
        payload = self.to_dict()
        payload.pop("tracking")
        payload["data"].pop("data_dir")
        for name in EXECUTION_FIELDS:
            payload.pop(name)
        if payload["device"] == "cpu":  # runs from before the field existed keep their key
            payload.pop("device")
        payload.pop("preset")
        defaults = train_defaults()
        for name in LATER_TRAIN_FIELDS:  # likewise for SGD runs at a constant lr
            if payload["train"][name] == defaults[name]:
                payload["train"].pop(name)
        payload["options"] = self.options_differing_from_defaults()
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _as_json(options: Any) -> dict[str, Any]:
    """An options dataclass as the plain values its JSON has (tuples as lists, 1 as 1.0 where typed float)."""
    return json.loads(json.dumps(dataclasses.asdict(options), default=str))


# --------------------------------------------------------------------- building
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check a YAML/CLI value against a field's annotation; convert ints to floats etc."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(path, value, inner)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} ({value!r}) must be true or false")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} ({value!r}) must be an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path} ({value!r}) must be a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} ({value!r}) must be a string")
    if origin is tuple:  # YAML and --opt give lists; frozen options need tuples
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} ({value!r}) must be a list, e.g. [1, 2]")
        items = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(items) != len(value):
            raise ConfigError(f"{path} ({value!r}) must have {len(items)} items")
        return tuple(_coerce(f"{path}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, items, strict=True)))
    return value


def build_dataclass(cls: type, values: Mapping[str, Any], path: str = "") -> Any:
    """Construct ``cls`` from a nested mapping, rejecting unknown keys by name."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(values).__name__}")
    types_by_name = _field_types(cls)
    unknown = sorted(set(values) - set(types_by_name))
    if unknown and not types_by_name:
        raise ConfigError(f"{path or 'config'} takes no keys, got {', '.join(map(repr, unknown))}")
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{where}; "
            f"allowed: {', '.join(types_by_name)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        annotation = types_by_name[name]
        sub_path = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = build_dataclass(annotation, value or {}, sub_path)
        elif name == "options":
            if not isinstance(value, Mapping):
                raise ConfigError(f"options must be a mapping of option name to value, got {value!r}")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _coerce(sub_path, value, annotation)
    return cls(**kwargs)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` wins; nested mappings are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _RepeatedKey(Exception):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


@functools.cache
def _unique_key_loader() -> type:
    """PyYAML's safe loader refusing a mapping that repeats a key (which it would resolve by
    silently keeping the last value, so `rounds: 20` ... `rounds: 200` runs 200)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden on purpose
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue
                if key in seen:
                    raise _RepeatedKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def load_yaml(path: str | Path, what: str = "config file", fix: str = "pass an existing YAML file to --config") -> dict[str, Any]:
    """Read a YAML file into a mapping, with one-line errors for every failure.

    ``what`` names the file in messages (``config file``, ``grid``) and ``fix`` says what to do
    when it is missing, so each command's message points at its own argument.
    """
    import yaml

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; {fix}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path} cannot be read ({exc.strerror})") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "expected a YAML file"
        ) from exc
    try:
        loaded = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 (a SafeLoader subclass)
    except _RepeatedKey as exc:
        raise ConfigError(f"{what} {path} repeats the key '{exc.key}' at line {exc.line}; keep one (YAML "
                          "would silently use the last)") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML{where}; fix its syntax") from exc
    if loaded is None:  # empty, or comments only: running the defaults instead would hide the mistake
        raise ConfigError(f"{what} {path} holds no settings (it is empty or only comments); {fix}")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys, got {type(loaded).__name__}")
    return loaded


def check_writable(folder: str | Path, what: str, fix: str) -> None:
    """Fail now, with one line, if files cannot be created in ``folder`` (made if missing).

    Checkpoints and MLflow artifacts are first written after round 1 or after the run is
    created; checking before anything runs turns a traceback (and a run left RUNNING) into one
    line. ``what`` names the folder in the message (``checkpoint folder``), ``fix`` says what
    to do about it.
    """
    import tempfile

    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".fedbench-write-check-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"{what} {path} is not writable ({reason}); {fix}") from exc


def make_config(yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults <- the preset's training values <- YAML file <- overrides (nested mapping), validated."""
    values: dict[str, Any] = load_yaml(yaml_path) if yaml_path is not None else {}
    return build_dataclass(RunConfig, with_preset(deep_merge(values, overrides or {})))


# A training value that decides what others mean: naming it explicitly drops the preset's values
# of the others (`--lr-schedule constant` over HeteroFL's multistep preset drops its milestones).
_COMPANIONS = {"lr_schedule": ("lr_decay", "lr_milestones", "lr_min"), "optimizer": ("momentum",)}


def with_preset(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` over the training values of the preset they name: the preset replaces the
    defaults, and every value given (in a config file, a grid or a flag) replaces the preset's.
    A stored run's config, which gives every value, is therefore run again as it was."""
    layer = preset_layer(values.get("preset"), values.get("method", RunConfig.method)).get("train")
    if not layer:
        return dict(values)
    given = values.get("train") or {}
    if isinstance(given, Mapping):
        for key, companions in _COMPANIONS.items():
            if key in given:
                layer = {k: v for k, v in layer.items() if k not in companions}
        masked = sorted(k for k, v in given.items() if k in layer and _as_list(v) != _as_list(layer[k]))
        if masked:
            log.warning("preset %s: the values given win over the preset's: %s", values.get("preset"),
                        ", ".join(f"train.{k}={given[k]} (preset: {layer[k]})" for k in masked))
    return deep_merge({"train": layer}, values)


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def preset_layer(preset: Any, method: Any) -> dict[str, Any]:
    """The whole ``train`` block ``preset`` sets for ``method``: ``paper`` the paper's common
    setting (TrainConfig's defaults), ``official`` those updated with the method's
    ``official_train``. Empty for no preset (or a value RunConfig will refuse by name); the
    paper's setting for a method that cannot be loaded (the run fails on that, in its own line)."""
    if preset not in PRESETS or not isinstance(method, str):
        return {}
    train = train_defaults()
    if preset == "official":
        train |= {k: _as_list(v) for k, v in official_train(method).items()}
    return {"train": train}


def official_train(method: str) -> Mapping[str, Any]:
    """The training values ``method``'s own code uses where they differ from the paper's common
    setting (``Method.official_train``; spec decisions Q7); none for a method that cannot be loaded."""
    try:
        return getattr(registry.load("methods", method), "official_train", {})
    except FedbenchError:
        return {}


def dotted_to_nested(pairs: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data.alpha": 0.1}`` -> ``{"data": {"alpha": 0.1}}``; ``None`` values are dropped."""
    nested: dict[str, Any] = {}
    for dotted, value in pairs.items():
        if value is None:
            continue
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def to_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def parse_option_pairs(pairs: list[str]) -> dict[str, Any]:
    """``--opt key=value`` pairs; values are read as YAML scalars (0.1, true, [1, 2])."""
    import yaml

    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--opt {pair!r} must look like key=value, e.g. --opt mu=0.01")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--opt {pair!r}: value is not a valid YAML scalar or list") from exc
    return options
