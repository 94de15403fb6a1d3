"""The names a method plugin may rely on: ``from fedbench.api import Method, local_sgd, ...``.

These keep their names and meanings across fedbench 0.x minor versions, so a
plugin that imports only from here (or from the modules they live in, e.g.
``fedbench.method.Method``) keeps working; everything else in fedbench is
internal and may move. The guide is ``docs/plugins.md``.

What a method gets
    :class:`Method` — subclass it; its default hooks are FedAvg. ``self.ctx`` is
    the :class:`RunContext` (``config``, ``data``, ``fleet``, ``memory``,
    ``build_model``, ``sample_clients``, ``eligible``/``require_eligible``,
    ``client_generator``/``selection_rng``), ``self.options`` the method's
    options dataclass (``options_type``), ``self.global_model`` the server model.
    :class:`Assignment`, :class:`Update` and :class:`Workload` are what the
    hooks exchange with the engine.

Shared pieces a method calls instead of re-implementing them
    :func:`local_sgd` (the one local training loop, with a ``loss_fn`` hook),
    :func:`weighted_average` / :func:`normalized_weights` (FedAvg averaging),
    :func:`overlap_count_average` (HeteroFL-style averaging of slices),
    :mod:`slicing` (width sub-models), :mod:`cutting` (depth/stage sub-models,
    early exits), :func:`evaluate`, the seeded streams :func:`numpy_rng` /
    :func:`torch_generator` with :attr:`Stream.METHOD` for a method's own draws,
    :class:`DeviceCost` / :class:`DeviceTime` / :class:`VirtualClock` for a
    method whose sub-models cost the virtual clock less than the full model.

Running and testing
    :func:`make_config`, :func:`prepare` (data, shards, fleet -> RunContext),
    :func:`run_rounds` (the round loop on a built method), :func:`run`.
"""

from __future__ import annotations

from fedbench.aggregate import normalized_weights, overlap_count_average, weighted_average
from fedbench.clock import DeviceCost, DeviceTime, VirtualClock
from fedbench.config import RunConfig, TrainConfig, make_config
from fedbench.data import FederatedData, ImageDataset
from fedbench.engine import RoundResult, RunResult, prepare, run, run_rounds
from fedbench.errors import ConfigError, FedbenchError, MemoryBudgetError, PluginError
from fedbench.evaluation import evaluate
from fedbench.fleet import Fleet
from fedbench.memory import MemoryModel, MemoryReport
from fedbench.method import Assignment, ClientContext, Method, NoOptions, RunContext, Update, Workload
from fedbench.models import BlockModel, build_model, cutting, slicing
from fedbench.seeding import Stream, numpy_rng, torch_generator
from fedbench.training import LocalResult, LossFn, cross_entropy_loss, local_sgd

__all__ = [
    "Assignment",
    "BlockModel",
    "ClientContext",
    "ConfigError",
    "DeviceCost",
    "DeviceTime",
    "FederatedData",
    "FedbenchError",
    "Fleet",
    "ImageDataset",
    "LocalResult",
    "LossFn",
    "MemoryBudgetError",
    "MemoryModel",
    "MemoryReport",
    "Method",
    "NoOptions",
    "PluginError",
    "RoundResult",
    "RunConfig",
    "RunContext",
    "RunResult",
    "Stream",
    "TrainConfig",
    "Update",
    "VirtualClock",
    "Workload",
    "build_model",
    "cross_entropy_loss",
    "cutting",
    "evaluate",
    "local_sgd",
    "make_config",
    "normalized_weights",
    "numpy_rng",
    "overlap_count_average",
    "prepare",
    "run",
    "run_rounds",
    "slicing",
    "torch_generator",
    "weighted_average",
]
