"""FedAvg (McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data", AISTATS 2017).

Every round K devices drawn uniformly train the global model for E local
epochs; the server averages their weights. It ignores memory budgets: every
device is assumed to fit the full model ("vanilla FL" in the NeuLite paper).
All of it is the engine's default behaviour. The spec's ``respect_memory=true``
variant (baselines.md §3) is the method ``exclusivefl``, a name of its own so that
tables never mistake it for vanilla FedAvg.
"""

from __future__ import annotations

from fedbench.api import (
    Method,
)


class FedAvg(Method):
    """Vanilla federated averaging; the reference every other method is compared with."""

    ignores_memory = True
