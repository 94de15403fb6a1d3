"""The virtual clock: simulated seconds of every round, from FLOPs, device speed and bandwidth.

The time of one device in one round is

    compute_s = training FLOPs per sample × samples × local epochs ÷ flops_per_s
    comm_s    = (bytes down + bytes up) ÷ bandwidth_bytes_per_s
    time_s    = compute_s + comm_s

and a synchronous round lasts as long as its slowest trained device. Training
FLOPs per sample are *counted*, not estimated: one local step of the exact
(sub-)model with its own trainable set and loss runs on the ``meta`` device
under :class:`torch.utils.flop_counter.FlopCounterMode`, so autograd does only
the work the device would do — the forward of a frozen part, forward and
backward of the trainable part (and input gradients only where a trainable
tensor needs them). Counts are cached per (sub-model, trainable set, loss).
Convention as in :mod:`fedbench.simulation.flops`: matrix products, convolutions and
attention count; BatchNorm, activations and the optimizer step count zero.

A method describes one device's work through the ``Method.device_cost`` hook
(:class:`DeviceCost`); the engine turns it into seconds with :func:`device_time`
and advances the :class:`VirtualClock` by the slowest device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from fedbench.errors import ConfigError
from fedbench.memory.model import _check_trainable, meta_training_copy, model_signature
from fedbench.simulation.fleet import Device, DeviceClass
from fedbench.tracing import cache as trace_cache
from fedbench.training.loop import LossFn, cross_entropy_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceCost:
    """One device's work in one round: the FLOPs it computes and the bytes it moves."""

    compute_flops: float
    bytes_down: int
    bytes_up: int


@dataclass(frozen=True)
class DeviceTime:
    """Simulated seconds one device needs for its round."""

    client_id: int
    compute_s: float
    comm_s: float

    @property
    def total_s(self) -> float:
        return self.compute_s + self.comm_s


@dataclass(frozen=True)
class ClockTime:
    """The clock's "now": rounds timed so far and their cumulative simulated seconds."""

    rounds: int = 0
    total_s: float = 0.0


def check_device(flops_per_s: float, bandwidth_bytes_per_s: float, what: str) -> None:
    """A device without a positive finite speed or bandwidth cannot be timed: one-line error."""
    for name, value in (("flops_per_s", flops_per_s), ("bandwidth_bytes_per_s", bandwidth_bytes_per_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{what}: {name} ({value!r}) must be a positive number; fix the fleet's device")


def device_time(client_id: int, cost: DeviceCost, device: Device | DeviceClass) -> DeviceTime:
    """Seconds of ``cost`` on ``device``: FLOPs ÷ FLOP/s plus bytes ÷ bandwidth."""
    check_device(device.flops_per_s, device.bandwidth_bytes_per_s, f"device {client_id}")
    return DeviceTime(
        client_id,
        compute_s=cost.compute_flops / device.flops_per_s,
        comm_s=(cost.bytes_down + cost.bytes_up) / device.bandwidth_bytes_per_s,
    )


def synchronous_round_s(times: Iterable[DeviceTime]) -> float:
    """A synchronous round ends when its slowest device has uploaded (0 for an empty round)."""
    return max((t.total_s for t in times), default=0.0)


def earliest(times: Iterable[DeviceTime], keep: int) -> list[DeviceTime]:
    """Over-commitment (Oort §10.5): the ``keep`` devices that finish first; devices that finish
    together keep the order given, so a caller that passes them in a random order drops a random
    one of them, not always the same."""
    return sorted(times, key=lambda t: t.total_s)[: max(keep, 0)]


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def state_bytes(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """Bytes of a full ``state_dict`` (parameters and buffers), as sent over the network."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return tensor_bytes(state.values())


def trainable_upload_bytes(model: nn.Module, trainable: Iterable[str] | None) -> int:
    """Bytes of the trainable parameters plus every buffer (BatchNorm statistics change even
    in a frozen part) — what a method that uploads "only what changed" sends (spec neulite §2.5)."""
    chosen = _check_trainable(model, trainable)
    params = [p for name, p in model.named_parameters() if name in chosen]
    return tensor_bytes(params) + tensor_bytes(model.buffers())


def count_step_flops(
    model: nn.Module,
    trainable: Iterable[str] | None,
    batch_size: int,
    input_shape: Sequence[int],
    loss_fn: LossFn = cross_entropy_loss,
) -> float:
    """FLOPs of one local step (forward, loss, backward) of ``model`` on a batch, per sample.

    Runs on a meta copy (no data, no arithmetic) with only ``trainable`` requiring
    gradients; the loss must work on meta tensors (it must not read values).
    """
    chosen = _check_trainable(model, trainable)
    images = torch.empty((batch_size, *input_shape), device="meta")
    labels = torch.zeros((batch_size,), device="meta", dtype=torch.int64)
    from torch.utils.flop_counter import FlopCounterMode  # imports triton (0.1 s): only when tracing

    with meta_training_copy(model, torch.float32, chosen) as meta, FlopCounterMode(display=False) as counter:
        loss = loss_fn(meta, images, labels)
        if loss.requires_grad:
            loss.backward()
    return counter.get_total_flops() / batch_size


@dataclass(eq=False)
class VirtualClock:
    """Per-run clock: a FLOPs cache per sub-model and the cumulative simulated time.

    ``batch_size``, ``input_shape`` and ``local_epochs`` are the run's; ``now`` is
    replaced (never mutated) by :meth:`advance`.
    """

    batch_size: int
    input_shape: tuple[int, ...]
    local_epochs: int
    now: ClockTime = field(default_factory=ClockTime)
    _flops: dict[Hashable, float] = field(default_factory=dict, repr=False)

    def step_flops(
        self, model: nn.Module, trainable: Iterable[str] | None = None, loss_fn: LossFn | None = None
    ) -> float:
        """Training FLOPs per sample of ``model`` with ``trainable`` and ``loss_fn`` (cached)."""
        loss_fn = loss_fn or cross_entropy_loss
        chosen = _check_trainable(model, trainable)
        key = (model_signature(model), chosen, loss_fn, self.batch_size, self.input_shape)
        found = self._flops.get(key)
        if found is None:
            found = trace_cache.cached(
                "flops", key, (model, loss_fn),
                lambda: count_step_flops(model, chosen, self.batch_size, self.input_shape, loss_fn),
            )
            self._flops[key] = found
            log.debug("training FLOPs of %s (%d trainable tensors): %.4g per sample",
                      getattr(model, "arch", type(model).__name__), len(chosen), found)
        return found

    def cost(
        self,
        model: nn.Module,
        samples: int,
        trainable: Iterable[str] | None = None,
        loss_fn: LossFn | None = None,
        bytes_down: int | None = None,
        bytes_up: int | None = None,
    ) -> DeviceCost:
        """``samples`` × local epochs of ``model``; transfers default to its full state both ways."""
        full = state_bytes(model) if bytes_down is None or bytes_up is None else 0
        return DeviceCost(
            compute_flops=self.step_flops(model, trainable, loss_fn) * samples * self.local_epochs,
            bytes_down=full if bytes_down is None else bytes_down,
            bytes_up=full if bytes_up is None else bytes_up,
        )

    def advance(self, times: Sequence[DeviceTime]) -> dict[str, float]:
        """Close a round: the slowest device's seconds; returns ``clock/round_s`` and ``clock/total_s``."""
        round_s = synchronous_round_s(times)
        self.now = ClockTime(self.now.rounds + 1, self.now.total_s + round_s)
        return {"clock/round_s": round_s, "clock/total_s": self.now.total_s}
