"""RunConfig: everything that defines a run, one frozen tree of the sections, and its run key.

Its canonical JSON form is hashed into the *run key* that sweeps use to skip finished runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedbench import registry
from fedbench.config.checks import require, require_one_of
from fedbench.config.coercion import build_dataclass
from fedbench.config.sections import (
    LATER_TRAIN_FIELDS,
    MAX_INFO_PLANE,
    MAX_ROUNDS,
    DataConfig,
    FleetConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
    train_defaults,
)
from fedbench.errors import ConfigError, FedbenchError

_NO_DEFAULT = object()  # an option without a default always counts as set

# The training presets (RunConfig.preset; docs/protocol.md).
PRESETS = ("paper", "official")
# How a client's update is weighted in the average.
WEIGHTINGS = ("uniform", "samples")
# How a round's local updates run (fedbench/execution/executors.py).
EXECUTORS = ("serial", "process", "ray", "streams")
# RunConfig fields that decide where work runs, never what it computes: not in the run key.
EXECUTION_FIELDS = ("executor", "workers", "executor_threads", "resident", "cuda_graphs", "channels_last")
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
    # torch threads (default: threads // workers; serial: threads); `streams` in `workers` threads
    # of this process, each on its own CUDA stream on a GPU. Not part of the run key.
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
    # part of the run key. None (the default): on for a resident GPU run, the fastest path measured
    # (docs/gpu.md); read the effective value from `uses_cuda_graphs`.
    cuda_graphs: bool | None = None
    # Keep the models' convolution weights, hence their activations, in the channels-last (NHWC)
    # layout, the one cuDNN's tensor-core kernels compute in, so it need not convert every
    # convolution's input and output (docs/gpu.md). The same arithmetic in another layout: like
    # cuDNN's run-time choice of algorithm, it moves the last bits only, so not part of the run key.
    # None (the default): on with a GPU, off on the CPU; read the effective value from
    # `uses_channels_last`.
    channels_last: bool | None = None

    def __post_init__(self) -> None:
        # Freeze the options mapping so the whole tree is immutable and hashable in spirit.
        object.__setattr__(self, "options", FrozenOptions(self.options))
        if self.preset is not None:
            require_one_of("preset", self.preset, PRESETS, "a preset", " (docs/protocol.md)")
        require(self.rounds >= 1, f"rounds ({self.rounds}) must be >= 1")
        require(self.rounds <= MAX_ROUNDS,
                 f"rounds ({self.rounds:,}) is above {MAX_ROUNDS:,}, the most a run may ask for; the paper uses 1,600")
        require(
            self.clients_per_round >= 1,
            f"clients_per_round ({self.clients_per_round}) must be >= 1",
        )
        require(
            self.clients_per_round <= self.data.num_clients,
            f"clients_per_round ({self.clients_per_round}) exceeds num_clients "
            f"({self.data.num_clients}); lower --clients-per-round or raise --clients",
        )
        require(self.eval_every >= 1, f"eval_every ({self.eval_every}) must be >= 1")
        require(self.eval_batch_size >= 1, f"eval_batch_size ({self.eval_batch_size}) must be >= 1")
        require(
            self.info_plane >= 0,
            f"info_plane ({self.info_plane}) must be >= 0 (probe images per class; 0 turns it off, the spec uses 200)",
        )
        require(
            self.info_plane <= MAX_INFO_PLANE,
            f"info_plane ({self.info_plane}) is above {MAX_INFO_PLANE:,} probe images per class: nHSIC holds "
            "n x n kernel matrices over all probe images; the spec uses 200",
        )
        require(
            self.weighting in WEIGHTINGS,
            f"weighting ({self.weighting!r}) must be one of {', '.join(WEIGHTINGS)}",
        )
        require(self.seed >= 0, f"seed ({self.seed}) must be >= 0")
        require(self.threads >= 1, f"threads ({self.threads}) must be >= 1")
        if self.executor not in EXECUTORS:
            close = difflib.get_close_matches(self.executor, EXECUTORS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown executor '{self.executor}'{hint}; known: {', '.join(EXECUTORS)}")
        require(self.workers >= 1,
                f"workers ({self.workers}) must be >= 1 (worker processes, Ray actors or trainer threads)")
        require(
            self.executor_threads is None or self.executor_threads >= 1,
            f"executor_threads ({self.executor_threads}) must be >= 1, or unset for threads // workers",
        )
        require(
            self.executor_threads is None or self.executor != "streams",
            f"executor_threads ({self.executor_threads}) does not apply to the streams executor, whose trainer "
            "threads share the process's torch threads; set --threads instead",
        )
        require(
            DEVICE_PATTERN.fullmatch(self.device) is not None,
            f"device ({self.device!r}) must be cpu, cuda or cuda:N (e.g. cuda:0)",
        )
        require(
            self.device == "cpu" or self.executor != "ray",
            f"device {self.device} runs with the serial, process or streams executor (got executor 'ray'); for "
            "several trainers on one GPU use --executor streams (or process) --workers K, for GPU cells on a Ray cluster "
            "`fedbench sweep GRID --executor ray` (docs/gpu.md)",
        )
        require(
            self.cuda_graphs is not True or (self.device != "cpu" and self.resident),
            f"cuda_graphs needs the resident GPU path (got device {self.device}"
            f"{', resident=false' if not self.resident else ''}); use --device cuda, or drop --cuda-graphs",
        )
        require(
            self.device == "cpu" or self.executor == "serial" or self.resident,
            f"--executor {self.executor} on device {self.device} needs the resident GPU path; drop resident=false",
        )

    # ----------------------------------------------------------------- views
    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether local steps are replayed from CUDA graphs: ``cuda_graphs``, or when unset, on a
        resident GPU run."""
        if self.cuda_graphs is not None:
            return self.cuda_graphs
        return self.device != "cpu" and self.resident

    @property
    def uses_channels_last(self) -> bool:
        """Whether models are built channels-last: ``channels_last``, or when unset, on a GPU."""
        if self.channels_last is not None:
            return self.channels_last
        return self.device != "cpu"

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
