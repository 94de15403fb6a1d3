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
        total = torch.zeros(first.shape, dtype=torch.float64)
        for state, weight in zip(states, weights):
            total.add_(state[key].to(torch.float64), alpha=weight)
        if first.dtype.is_floating_point:
            averaged[key] = total.to(first.dtype)
        else:
            averaged[key] = total.round_().to(first.dtype)
    return averaged
