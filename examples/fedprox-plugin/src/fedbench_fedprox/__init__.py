"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020)
as a fedbench method plugin.

FedProx is FedAvg with one change on the device: the local objective gains a
proximal term that keeps the local weights near the global weights the device
started the round from,

    h(w) = F(w) + mu / 2 * ||w - w_global||^2,

which limits client drift on non-IID data. Selection, aggregation and
evaluation are FedAvg's, so this class overrides two hooks of
:class:`fedbench.api.Method`, ``loss``: it adds the term, anchored at the
weights the client started from (``client.start_weights``, which the engine
fills before local SGD, on the device the client trains on). With ``mu = 0``
it is FedAvg, bit for bit. It keeps no state beyond FedAvg's.

It imports only :mod:`fedbench.api`, the names fedbench keeps stable for
plugins, and registers itself in its ``pyproject.toml``::

    [project.entry-points."fedbench.methods"]
    fedprox = "fedbench_fedprox:FedProx"
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from fedbench.api import ClientContext, ConfigError, Method, graph_safe


@dataclass(frozen=True, kw_only=True)
class FedProxOptions:
    """Set with ``--opt mu=0.1`` or YAML ``options: {mu: 0.1}``; logged as ``options.mu``."""

    # Weight of the proximal term. The paper tunes it over {0.001, 0.01, 0.1, 1}.
    mu: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ConfigError(f"option mu ({self.mu}) must be a finite number >= 0 (0 is FedAvg; try 0.01)")


def proximal_term(model: nn.Module, anchor: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``||w - w_anchor||^2`` summed over the parameters of ``model`` that are trained
    (``requires_grad``); frozen parameters cannot move, so they add nothing."""
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        if param.requires_grad:
            total = total + (param - anchor[name]).pow(2).sum()
    return total


class FedProx(Method):
    """FedAvg whose local loss adds ``mu / 2 * ||w - w_global||^2``; ``client.start_weights``
    holds the parameters the client started its round from, on the device it trains on."""

    options_type = FedProxOptions
    ignores_memory = True  # every device trains the full model, as in FedAvg

    @graph_safe  # GPU work only, on tensors fixed for the client's training: --cuda-graphs may replay it
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, client: ClientContext) -> torch.Tensor:
        proximal = proximal_term(model, client.start_weights)
        return super().loss(model, images, labels, client) + self.options.mu / 2 * proximal
