"""Everything before round 1: data set, client shards, fleet, method; and a method's state in and
out of a checkpoint. The engine and the worker processes build a run the same way, from here."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from fedbench import registry
from fedbench.config import RunConfig
from fedbench.core import checkpoint, state
from fedbench.core.context import RunContext
from fedbench.core.method import Method, validate_method
from fedbench.data import MIN_TRAIN_BATCH, FederatedData, ImageDataset
from fedbench.datasets.partitioners import partition_stats
from fedbench.errors import CheckpointError, ConfigError, PluginError
from fedbench.seeding import Stream, numpy_rng
from fedbench.simulation.fleet import make_fleet

log = logging.getLogger(__name__)


def load_dataset(config: RunConfig) -> ImageDataset:
    loader = registry.load("datasets", config.data.dataset, validate=_validate_callable)
    dataset = loader(config.data.data_dir)
    if not isinstance(dataset, ImageDataset):
        raise PluginError(f"dataset '{config.data.dataset}' returned {type(dataset).__name__}, not ImageDataset")
    return dataset


def partition(config: RunConfig, dataset: ImageDataset) -> tuple[FederatedData, dict]:
    """Client shards from the configured partitioner, plus their statistics."""
    split = registry.load("partitioners", config.data.partition, validate=_validate_callable)
    labels = dataset.train_labels.numpy()
    shards = split(labels, config.data, numpy_rng(config.seed, Stream.PARTITION), dataset.train_writers)
    data = FederatedData(dataset, [torch.as_tensor(s, dtype=torch.int64) for s in shards])
    return data, partition_stats(labels, shards, dataset.num_classes)


def warn_of_idle_clients(data: FederatedData) -> None:
    """Says, once per run, how many clients the split left unable to train: local SGD skips a
    batch of one sample, so a client holding one sample sends back the model it received."""
    single = [i for i, shard in enumerate(data.shards) if shard.numel() < MIN_TRAIN_BATCH]
    if single:
        log.warning(
            "%d of %d clients hold a single sample (e.g. client %d) and train no step, since a batch of "
            "one is skipped; their unchanged models still count in a uniform average. Raise --alpha or lower "
            "--clients.", len(single), len(data.shards), single[0],
        )


def home_device(config: RunConfig) -> torch.device:
    """Where the run keeps its data, models and aggregation: the GPU for a resident GPU run
    (``device`` cuda, ``resident`` true), else the CPU (the GPU then only computes, see
    :func:`fedbench.training.loop.placed_on`)."""
    if config.device != "cpu" and config.resident:
        return torch.device(config.device)
    return torch.device("cpu")


def prepare(config: RunConfig) -> tuple[RunContext, dict]:
    """Load data, split it and build the run context (everything before the method)."""
    dataset = load_dataset(config)
    data, stats = partition(config, dataset)
    home = home_device(config)
    if home.type != "cpu":  # split on the CPU (the partitioners are NumPy), then moved once
        data = FederatedData(dataset.to(home), data.shards)
    return run_context(config, data), stats


def run_context(config: RunConfig, data: FederatedData) -> RunContext:
    """The run context over ``data`` (already split, and on the run's device): its fleet made."""
    ctx = RunContext(config=config, data=data, device=home_device(config))
    ctx.fleet = make_fleet(config.fleet, data.num_clients, config.seed, ctx.reference_peak_bytes)
    return ctx


def make_method(ctx: RunContext) -> Method:
    method_cls = registry.load("methods", ctx.config.method, validate=validate_method)
    return method_cls(ctx, method_cls.parse_options(ctx.config.options))


# Threads (or worker processes) per CPU of this machine above which a run is refused: beyond it
# torch or the OS fails to start them (a crash, not a message), and nothing runs faster anyway.
MAX_THREADS_PER_CPU = 4


def check_parallelism(config: RunConfig) -> None:
    """Fail before anything starts if ``threads`` (or the process executor's ``workers``) asks for
    far more than this machine's CPUs, which crashes torch's thread pool instead of running."""
    cpus = os.cpu_count() or 1
    limit = MAX_THREADS_PER_CPU * cpus
    if config.threads > limit:
        raise ConfigError(f"threads ({config.threads}) is above {limit}, {MAX_THREADS_PER_CPU} per CPU of this "
                          f"machine ({cpus}); use --threads {cpus}")
    if config.executor in ("process", "streams") and config.workers > limit:
        raise ConfigError(f"workers ({config.workers}) is above {limit}, {MAX_THREADS_PER_CPU} per CPU of this "
                          f"machine ({cpus}); use --workers {max(1, cpus // 2)} or fewer")


def check_device(device: str) -> None:
    """Fail before loading anything if ``device`` (``cpu``, ``cuda``, ``cuda:N``) is not here."""
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"device {device} asked for, but torch ({torch.__version__}, {built}) sees no CUDA GPU; "
                          "run with --device cpu or on a machine with an NVIDIA GPU")
    index = torch.device(device).index
    if index is not None and index >= torch.cuda.device_count():
        raise ConfigError(f"device {device} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")


def _validate_callable(name: str, obj: object) -> None:
    if not callable(obj):
        raise PluginError(f"plugin '{name}' must be callable, got {obj!r}")


def snapshot(method: Method, round_idx: int, rows: list[dict[str, float]]) -> checkpoint.Checkpoint:
    """The checkpoint of ``method`` after round ``round_idx``: its declared state as plain data."""
    config = method.ctx.config
    name = type(method).__name__
    method_state = {key: state.encode(value, f"{name}.{key}") for key, value in method.state_values().items()}
    context_state = state.encode(method.ctx.checkpoint_state(), "the run context")
    return checkpoint.Checkpoint(config.run_key, round_idx, method_state, context_state, rows, config.flat_params())


def restore(method: Method, saved: checkpoint.Checkpoint) -> None:
    """Load a verified checkpoint into a freshly built ``method`` (same config)."""
    name, home = type(method).__name__, type(method).__module__
    declared = set(method.state_names())
    if set(saved.method_state) != declared:
        raise CheckpointError(
            f"the checkpoint's state ({', '.join(sorted(saved.method_state))}) is not what {name} declares "
            f"({', '.join(sorted(declared))}); it was written by another version of the method: rerun"
        )
    live = method.state_values()
    device = method.ctx.device
    method.load_state_values({
        key: _tensors_to(state.decode(value, live[key], f"{name}.{key}", home), device)
        for key, value in saved.method_state.items()
    })
    method.ctx.restore_state(state.decode(saved.context_state, None, "the run context", home))


def _tensors_to(value: Any, device: torch.device) -> Any:
    """``value`` with the tensors in its dicts, lists and tuples on ``device``: a checkpoint loads on the
    CPU, and a resident GPU run keeps a method's plain tensors (DepthFL's FedDyn vectors) where its
    models are. Modules were loaded into the live ones, which are there already."""
    if device.type == "cpu":  # where the checkpoint loaded it
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _tensors_to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_tensors_to(v, device) for v in value)
    return value
