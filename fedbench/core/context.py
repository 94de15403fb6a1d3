"""The run context: everything a method may use besides its own state — the config, the federated
data, the device fleet and the memory model (who may train what), the virtual clock, seeded
randomness and the run's architecture."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedbench.config import RunConfig, TrainConfig
from fedbench.data import FederatedData
from fedbench.errors import MemoryBudgetError
from fedbench.memory.model import MemoryModel, MemoryReport, format_bytes, optimizer_spec
from fedbench.models import BlockModel, build_model
from fedbench.seeding import Stream, numpy_rng, torch_generator
from fedbench.simulation.clock import VirtualClock
from fedbench.simulation.fleet import Fleet
from fedbench.tracing.meta import building_on_meta
from fedbench.training.loop import LossFn, cross_entropy_loss


@dataclass(eq=False)
class RunContext:
    """Everything a method may use: config, data, seeded randomness, the device fleet
    and the memory model (who may train what)."""

    config: RunConfig
    data: FederatedData
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    fleet: Fleet | None = None  # None: every device fits everything
    memory: MemoryModel | None = None
    participants: set[int] = field(default_factory=set)  # union of the pools sampled from
    # Why the method cannot train its whole model on this fleet although some rounds run (a
    # NeuLite stage no device fits): its PR is then 0, "NA" in the tables (spec common.md §1.1).
    # Derived from the fleet when the method is built, so it is not checkpointed.
    not_runnable: str | None = None
    clock: VirtualClock | None = None  # simulated time (fedbench/simulation/clock.py); built from the config
    _full_model_rate: float | None = field(default=None, repr=False)
    _reference_peak: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.memory is None:
            self.memory = MemoryModel(optimizer=optimizer_spec(self.config.train))
        if self.clock is None:
            train = self.config.train
            self.clock = VirtualClock(train.batch_size, self.data.dataset.input_shape, train.local_epochs)

    @property
    def num_clients(self) -> int:
        return self.data.num_clients

    def checkpoint_state(self) -> dict[str, Any]:
        """The run-long state the context accumulates: who took part, the virtual clock's time."""
        return {"participants": set(self.participants), "clock_now": self.clock.now if self.clock else None}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        self.participants = set(state["participants"])
        if self.clock is not None and state["clock_now"] is not None:
            self.clock.now = state["clock_now"]

    def memory_report(
        self, model: nn.Module, trainable: Iterable[str] | None = None, loss_fn: LossFn | None = None
    ) -> MemoryReport:
        """Peak bytes of one local step of ``model`` at the run's batch size (cached)."""
        return self.memory.report(
            model, trainable, batch_size=self.config.train.batch_size,
            input_shape=self.data.dataset.input_shape, loss_fn=loss_fn or cross_entropy_loss,
        )

    def eligible(
        self, model: nn.Module, trainable: Iterable[str] | None = None, loss_fn: LossFn | None = None
    ) -> list[int]:
        """Ids of the devices whose memory budget holds one local step of ``model``
        with ``trainable`` parameters (all by default) and ``loss_fn``."""
        if self.fleet is None or self.fleet.unlimited:
            return list(range(self.num_clients))
        return self.fleet.eligible(self.memory_report(model, trainable, loss_fn).peak_bytes)

    def require_eligible(
        self, model: nn.Module, trainable: Iterable[str] | None = None, loss_fn: LossFn | None = None
    ) -> list[int]:
        """:meth:`eligible`, but no fitting device is a :class:`MemoryBudgetError` (fail before round 1)."""
        ids = self.eligible(model, trainable, loss_fn)
        if not ids:
            need = self.memory_report(model, trainable, loss_fn).peak_bytes
            largest = self.fleet.largest_budget_bytes if self.fleet is not None else None
            name = getattr(model, "arch", type(model).__name__)
            raise MemoryBudgetError(
                f"no device can train {name} (needs {format_bytes(need)} at batch "
                f"{self.config.train.batch_size}; largest budget {format_bytes(largest or 0)}); "
                "choose a larger --fleet profile, a smaller --batch-size or --width"
            )
        return ids

    def full_model_peak_bytes(self) -> int:
        """Peak of one local step of the run's full model, all trainable (cached). Built on the
        meta device: the memory model reads shapes only, so no weights are drawn."""
        dataset = self.data.dataset
        with building_on_meta():
            model = build_model(self.config.model.name, dataset.input_shape, dataset.num_classes,
                                width=self.config.model.width)
        return self.memory_report(model).peak_bytes

    def reference_peak_bytes(self) -> int:
        """Peak of one local step of the run's full model under the paper's common training (its
        SGD and batch 64), whatever the run's own: the scale of the ``relative`` fleet (cached)."""
        if self._reference_peak is None:
            dataset = self.data.dataset
            self._reference_peak = reference_peak_bytes(
                self.config.model.name, dataset.input_shape, dataset.num_classes, self.config.model.width)
        return self._reference_peak

    def participation_metrics(self) -> dict[str, float]:
        """``participation/rate``: PR = |union over the run of the pools sampled from| / N, or 0
        when part of the method is not runnable (:attr:`not_runnable`; spec common.md §1.1);
        ``participation/full_model_rate``: the share of devices that
        can train the full model (ExclusiveFL's PR; what vanilla FedAvg would get)."""
        if self._full_model_rate is None:
            if self.fleet is None or self.fleet.unlimited:
                self._full_model_rate = 1.0
            else:
                self._full_model_rate = self.fleet.participation_rate(self.full_model_peak_bytes())
        return {
            "participation/rate": 0.0 if self.not_runnable else len(self.participants) / self.num_clients,
            "participation/full_model_rate": self._full_model_rate,
        }

    def build_model(self, width: float | None = None, init_key: int = 0) -> BlockModel:
        """The run's architecture, initialised from the run seed (``init_key`` picks another draw),
        in the channels-last layout where the run asks for it (copies of it keep the layout)."""
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
        if self.config.uses_channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
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
        self.participants.update(pool.tolist())  # one C-level pass: this runs every round over up to N ids
        take = min(self.config.clients_per_round, pool.size)
        if take == 0:
            return []
        chosen = self.selection_rng(round_idx).choice(pool, size=take, replace=False)
        return sorted(int(c) for c in chosen)


def reference_peak_bytes(model_name: str, input_shape: Sequence[int], num_classes: int, width: float) -> int:
    """Peak of one local step of a full model trained as the paper's common setting trains it
    (SGD with momentum 0.9, weight decay 5e-4, batch 64): the devices of the ``relative`` fleet
    are fractions of it, so they do not change with a run's optimizer, batch or preset. A run
    trained that way finds the trace in the memory model's caches."""
    reference = TrainConfig()
    with building_on_meta():
        model = build_model(model_name, tuple(input_shape), num_classes, width=width)
    return MemoryModel(optimizer=optimizer_spec(reference)).peak_bytes(
        model, batch_size=reference.batch_size, input_shape=tuple(input_shape))
