"""The names a method plugin may rely on: ``from fedbench.api import Method, local_sgd, ...``.

These keep their names and meanings across fedbench 0.x minor versions, so a
plugin that imports only from here keeps working; everything else in fedbench is
internal and may move. The built-in methods import nothing else, which is the
proof that these names suffice. The guide is ``docs/plugins.md``.

What a method gets
    :class:`Method` — subclass it; its default hooks are FedAvg. ``self.ctx`` is
    the :class:`RunContext` (``config``, ``data``, ``fleet``, ``memory``,
    ``build_model``, ``sample_clients``, ``eligible``/``require_eligible``,
    ``client_generator``/``selection_rng``), ``self.options`` the method's
    options dataclass (``options_type``), ``self.global_model`` the server model.
    :class:`Assignment`, :class:`ClientContext`, :class:`Update` and
    :class:`Workload` are what the hooks exchange with the engine.

Shared pieces a method calls instead of re-implementing them
    :func:`local_sgd` (the one local training loop, with a ``loss_fn`` hook;
    :func:`graph_safe` marks a loss that a GPU run may replay from a CUDA graph,
    :func:`graph_reusable` one whose graph may serve every client of the same model),
    :func:`weighted_average` / :func:`normalized_weights` (FedAvg averaging),
    :func:`overlap_count_average` (HeteroFL-style averaging of slices),
    :mod:`slicing` (width sub-models), :mod:`cutting` (depth/stage sub-models,
    early exits), :func:`evaluate` (and :func:`evaluate_outputs` for a model with several
    outputs), the seeded streams :func:`numpy_rng` /
    :func:`torch_generator` with :attr:`Stream.METHOD` for a method's own draws,
    :class:`DeviceCost` / :class:`DeviceTime` / :class:`VirtualClock` for a
    method whose sub-models cost the virtual clock less than the full model;
    the kits several methods share: width sub-models (``level_model``,
    ``widest_levels``, ``MaskedCrossEntropy``, static BatchNorm), nHSIC
    (``nhsic``), stage and exit models (``StageModel``, ``exit_heads``).

Running and testing
    :func:`make_config`, :func:`prepare` (data, shards, fleet -> RunContext),
    :func:`run_rounds` (the round loop on a built method), :func:`run`.
"""

from __future__ import annotations

from fedbench.config import RunConfig, TrainConfig, make_config
from fedbench.core.context import RunContext
from fedbench.core.evaluation import evaluate, evaluate_outputs
from fedbench.core.method import Assignment, ClientContext, Method, NoOptions, Update, Workload
from fedbench.data import FederatedData, ImageDataset, training_batch_sizes
from fedbench.engine import RoundResult, RunResult, prepare, run, run_rounds
from fedbench.errors import ConfigError, FedbenchError, MemoryBudgetError, PluginError
from fedbench.kits.bn import recompute_bn_statistics, sbn_indices
from fedbench.kits.hsic import SIGMA, nhsic, one_hot
from fedbench.kits.width_training import (
    ClientMaskedCrossEntropy,
    MaskedCrossEntropy,
    add_scaler,
    use_batch_statistics,
)
from fedbench.kits.widths import (
    CONTINUOUS_STEPS,
    HETEROFL_LEVELS,
    check_levels,
    largest_fitting,
    level_fraction,
    level_label,
    level_model,
    no_level_fits,
    require_sliceable,
    widest_levels,
)
from fedbench.memory.model import MemoryModel, MemoryReport, format_bytes
from fedbench.models import BlockModel, build_model, cutting, slicing
from fedbench.models.cutting import (
    ExitModel,
    OutputModule,
    StageModel,
    check_block_index,
    coadaptation_scope,
    cut_spec,
    exit_heads,
    output_module,
    prefix_head,
    prefix_model,
)
from fedbench.models.slicing import IndexSets, Rule, extract, index_sets, layout, positions
from fedbench.seeding import Stream, derive_seed, numpy_rng, torch_generator
from fedbench.simulation.clock import DeviceCost, DeviceTime, VirtualClock, earliest, state_bytes
from fedbench.simulation.fleet import Fleet
from fedbench.training.aggregate import normalized_weights, overlap_count_average, weighted_average
from fedbench.training.graphs import graph_reusable, graph_safe
from fedbench.training.loop import LocalResult, LossFn, cross_entropy_loss, local_sgd, placed_on

__all__ = [
    # the contract and what the hooks exchange
    "Assignment", "ClientContext", "Method", "NoOptions", "RunContext", "Update", "Workload",
    # errors a method raises for bad input
    "ConfigError", "FedbenchError", "MemoryBudgetError", "PluginError",
    # training, averaging, evaluation
    "LocalResult", "LossFn", "cross_entropy_loss", "evaluate", "evaluate_outputs", "graph_reusable", "graph_safe", "local_sgd", "normalized_weights",
    "overlap_count_average", "placed_on", "weighted_average",
    # seeded randomness
    "Stream", "derive_seed", "numpy_rng", "torch_generator",
    # models: the zoo, depth cutting and width slicing
    "BlockModel", "ExitModel", "IndexSets", "OutputModule", "Rule", "StageModel", "build_model",
    "check_block_index", "coadaptation_scope", "cut_spec", "cutting", "exit_heads", "extract", "index_sets",
    "layout", "output_module", "positions", "prefix_head", "prefix_model", "slicing",
    # kits: width levels, width training, static BatchNorm, nHSIC
    "CONTINUOUS_STEPS", "HETEROFL_LEVELS", "ClientMaskedCrossEntropy", "MaskedCrossEntropy", "SIGMA", "add_scaler", "check_levels",
    "largest_fitting", "level_fraction", "level_label", "level_model", "nhsic", "no_level_fits", "one_hot",
    "recompute_bn_statistics", "require_sliceable", "sbn_indices", "use_batch_statistics", "widest_levels",
    # memory, fleet, virtual clock
    "DeviceCost", "DeviceTime", "Fleet", "MemoryModel", "MemoryReport", "VirtualClock", "earliest",
    "format_bytes", "state_bytes",
    # running and testing
    "FederatedData", "ImageDataset", "training_batch_sizes", "RoundResult", "RunConfig", "RunResult", "TrainConfig", "make_config",
    "prepare", "run", "run_rounds",
]
