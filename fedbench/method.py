"""The method plugin contract: one class, a few hooks, shared engine pieces.

The base class *is* FedAvg's behaviour (uniform selection, local SGD on the
global model, averaging, evaluate the global model); a method overrides only
what makes it different. Hooks, called by the engine in this order each round:

``assign(round_idx)``          which device trains what this round
``local_update(a, round_idx)`` one device's local work -> :class:`Update`
``aggregate(round_idx, ups)``  fold the updates into the server state
``eval_model()``               the model the engine evaluates
``round_metrics(...)``         extra per-round metrics to log (e.g. PR)

and ``loss(model, x, y)``, the local objective the shared SGD loop minimises.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedbench.aggregate import normalized_weights, weighted_average
from fedbench.config import RunConfig, build_dataclass
from fedbench.data import FederatedData
from fedbench.errors import ConfigError, PluginError
from fedbench.models import BlockModel, build_model
from fedbench.seeding import Stream, numpy_rng, torch_generator
from fedbench.training import cross_entropy_loss, local_sgd


@dataclass(frozen=True, kw_only=True)
class NoOptions:
    """A method without options of its own."""


@dataclass(frozen=True)
class Assignment:
    """One device's job this round. ``work`` is the method's own description
    (a width, a stage, ...); the engine never looks inside it."""

    client_id: int
    work: Any = None


@dataclass
class Update:
    """What a device sends back: its new weights and how it got them."""

    client_id: int
    num_samples: int
    state: dict[str, torch.Tensor]
    loss: float
    num_steps: int
    work: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class RunContext:
    """Everything a method may use: config, data, and seeded randomness."""

    config: RunConfig
    data: FederatedData
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def num_clients(self) -> int:
        return self.data.num_clients

    def build_model(self, width: float | None = None, init_key: int = 0) -> BlockModel:
        """The run's architecture, initialised from the run seed (``init_key`` picks another draw)."""
        dataset = self.data.dataset
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(
                int(numpy_rng(self.config.seed, Stream.MODEL_INIT, init_key).integers(2**62))
            )
            model = build_model(
                self.config.model.name,
                dataset.input_shape,
                dataset.num_classes,
                width=self.config.model.width if width is None else width,
            )
        return model.to(self.device)

    def client_generator(self, round_idx: int, client_id: int) -> torch.Generator:
        """The generator for one device's local work in one round (shuffling, augmentation)."""
        return torch_generator(self.config.seed, Stream.CLIENT, round_idx, client_id)

    def selection_rng(self, round_idx: int) -> np.random.Generator:
        return numpy_rng(self.config.seed, Stream.SELECTION, round_idx)

    def sample_clients(self, round_idx: int, eligible: Sequence[int] | None = None) -> list[int]:
        """``min(K, |E|)`` devices drawn uniformly without replacement from ``eligible``
        (all devices by default), in ascending id order (spec common.md §1.1)."""
        pool = np.arange(self.num_clients) if eligible is None else np.asarray(eligible, dtype=np.int64)
        take = min(self.config.clients_per_round, pool.size)
        if take == 0:
            return []
        chosen = self.selection_rng(round_idx).choice(pool, size=take, replace=False)
        return sorted(int(c) for c in chosen)


class Method:
    """Base class of every method; its default hooks implement FedAvg."""

    options_type: ClassVar[type] = NoOptions

    def __init__(self, ctx: RunContext, options: Any | None = None) -> None:
        self.ctx = ctx
        self.options = options if options is not None else self.options_type()
        self.global_model: BlockModel = ctx.build_model()
        self._worker: nn.Module | None = None

    # ------------------------------------------------------------ options
    @classmethod
    def parse_options(cls, values: Mapping[str, Any]) -> Any:
        """The method's options dataclass from a mapping (YAML ``options:`` or ``--opt k=v``)."""
        try:
            return build_dataclass(cls.options_type, dict(values), path="options")
        except TypeError as exc:  # a required option without a default is missing
            raise ConfigError(f"options for method {cls.__name__}: {exc}") from exc

    # -------------------------------------------------------------- hooks
    def assign(self, round_idx: int) -> list[Assignment]:
        return [Assignment(c) for c in self.ctx.sample_clients(round_idx)]

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cross_entropy_loss(model, images, labels)

    def local_update(self, assignment: Assignment, round_idx: int) -> Update:
        """Train a copy of the global model on the device's shard with the shared SGD loop."""
        model = self.worker_model()
        model.load_state_dict(self.global_model.state_dict())
        result = local_sgd(
            model,
            self.ctx.data.dataset,
            self.ctx.data.shards[assignment.client_id],
            self.ctx.config.train,
            self.ctx.client_generator(round_idx, assignment.client_id),
            loss_fn=self.loss,
        )
        return Update(
            client_id=assignment.client_id,
            num_samples=result.num_samples,
            state={k: v.detach().clone() for k, v in model.state_dict().items()},
            loss=result.mean_loss,
            num_steps=result.num_steps,
            work=assignment.work,
        )

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        if not updates:
            return
        self.global_model.load_state_dict(self.average(updates))

    def eval_model(self) -> nn.Module:
        return self.global_model

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        return {}

    # ------------------------------------------------------ shared pieces
    def average(self, updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        """The run's weighting (``uniform`` or ``samples``) applied to the updates' states."""
        weights = normalized_weights([u.num_samples for u in updates], self.ctx.config.weighting)
        return weighted_average([u.state for u in updates], weights)

    def worker_model(self) -> nn.Module:
        """A reusable model instance for local training, so no model is built per client."""
        if self._worker is None:
            self._worker = copy.deepcopy(self.global_model)
        return self._worker


def validate_method(name: str, obj: object) -> None:
    """Registry check: a method plugin must be a :class:`Method` subclass with a dataclass options type."""
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        raise PluginError(f"method '{name}' must be a subclass of fedbench.method.Method, got {obj!r}")
    if not dataclasses.is_dataclass(obj.options_type):
        raise PluginError(f"method '{name}': options_type must be a dataclass")
