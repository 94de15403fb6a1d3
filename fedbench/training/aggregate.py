"""Aggregation maths as pure functions on state dicts (no models, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def normalized_weights(num_samples: Sequence[int], weighting: str) -> list[float]:
    """``uniform``: every client counts the same (NeuLite's released code);
    ``samples``: proportional to local data size (FedAvg paper)."""
    if weighting == "uniform":
        return [1.0 / len(num_samples)] * len(num_samples)
    if weighting == "samples":
        total = float(sum(num_samples))
        return [n / total for n in num_samples]
    raise ValueError(f"unknown weighting {weighting!r}")


def weighted_average(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Entry-wise weighted mean of state dicts (BN buffers included).

    Summed in float64 in the given order, so the result does not depend on the
    order clients finished in. Integer entries (``num_batches_tracked``) are
    rounded back to their dtype.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    averaged: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        total = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for state, weight in zip(states, weights, strict=True):
            total.add_(state[key].to(torch.float64), alpha=weight)
        if first.dtype.is_floating_point:
            averaged[key] = total.to(first.dtype)
        else:
            averaged[key] = total.round_().to(first.dtype)
    return averaged


def overlap_count_average(
    old: Mapping[str, torch.Tensor],
    states: Sequence[Mapping[str, torch.Tensor]],
    positions: Sequence[Mapping[str, Sequence[torch.Tensor | None]]],
    weights: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """HeteroFL/FedRolex aggregation (spec baselines.md §6.5): every entry of a global tensor
    becomes the mean over the clients whose slice covered it; entries nobody covered keep
    their old value.

    ``states[m][key]`` is client m's (sliced) tensor and ``positions[m][key]`` its global
    positions per dimension (None: the whole dimension), as given by
    :func:`fedbench.models.slicing.positions`. A key missing from a client's state means
    the client did not hold that tensor (DepthFL's per-tensor holder average is the case
    with all-None positions). To average classifier rows only over clients holding a
    class, pass those rows' positions and the matching rows of the client's tensor.
    Sums run in float64 in client order, on the device of ``old``; integer entries are rounded back.
    ``weights`` (one per client; None: all 1) make every entry a weighted mean over its
    holders instead (the run's ``samples`` weighting).
    """
    if len(states) != len(positions):
        raise ValueError(f"{len(states)} states but {len(positions)} position maps")
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    averaged: dict[str, torch.Tensor] = {}
    for key, current in old.items():
        device = current.device
        total = torch.zeros(current.shape, dtype=torch.float64, device=device)
        count = torch.zeros(current.shape, dtype=torch.float64, device=device)
        for state, where, weight in zip(states, positions, weights, strict=True):
            if key not in state:
                continue
            value = state[key].detach().to(device, torch.float64)
            if current.dim() == 0:
                total += weight * value
                count += weight
                continue
            # A client's positions are distinct, so index_add_ is deterministic on a GPU too.
            flat = _flat_positions(current.shape, where[key], device)
            total.view(-1).index_add_(0, flat, value.reshape(-1), alpha=weight)
            count.view(-1).index_add_(0, flat, torch.full_like(value, weight).reshape(-1))
        covered = count > 0
        mean = torch.where(covered, total / torch.where(covered, count, 1.0), current.detach().to(torch.float64))
        if not current.dtype.is_floating_point:
            mean = mean.round()
        averaged[key] = mean.to(current.dtype)
    return averaged


def _flat_positions(
    shape: torch.Size, where: Sequence[torch.Tensor | None], device: torch.device
) -> torch.Tensor:
    """Row-major flat positions of the outer product of per-dimension index sets (None: all)."""
    flat = torch.zeros((), dtype=torch.long, device=device)
    for dim, size in enumerate(shape):
        idx = where[dim] if where[dim] is not None else torch.arange(size, device=device)
        flat = flat.unsqueeze(-1) * size + idx.to(device).long()
    return flat.reshape(-1)
