"""FedRolex (Alam, Liu, Yan, Zhang, "FedRolex: Model-Heterogeneous Federated Learning with
Rolling Sub-Model Extraction", NeurIPS 2022) — spec baselines.md §7.

HeteroFL with one difference: the channels a sub-model keeps are a window that rolls by
one channel per round and wraps around, S_ℓ(r) = {(r + j) mod K_ℓ : j < ⌈β·K_ℓ⌉} (the
paper's form; r = server aggregations completed so far), so over K_ℓ rounds every channel
of layer ℓ is trained even when no device can hold the full width. All clients of a
round share r; every layer of the same width gets the same window, which keeps residual
streams consistent. Levels from memory, Scaler, masked CE, clipping, overlap-count
averaging and sBN evaluation of the full-width global model are HeteroFL's.

Aggregation is plain overlap-count averaging (the paper's text). The official code's
default ``avg`` weighting instead weights 1-D tensors and the classifier by a per-entry
counter of past updates that is also bumped while a round's clients are added, so later
clients of a round weigh slightly more; in the long run that is ≈ plain averaging
(spec §7.4), and fedbench does not replicate the quirk.
"""

from __future__ import annotations

from fedbench.methods.heterofl import HeteroFL


class FedRolex(HeteroFL):
    """Rolling width scaling: HeteroFL whose per-layer channel window moves one channel per round."""

    rule = "rolling"
    method_name = "fedrolex"
    # Not HeteroFL's: [C-FR] utils.py process_control for CIFAR (SGD, momentum 0.9, weight decay
    # 1e-3, batch 10, MultiStepLR ×0.25) with its README's CIFAR-10 ResNet18 commands (lr 2e-4,
    # 1 local epoch, milestones 800 and 1200 of 3200 rounds); spec §7.5.
    official_train = {"lr": 2e-4, "weight_decay": 1e-3, "local_epochs": 1, "batch_size": 10,
                      "lr_schedule": "multistep", "lr_decay": 0.25, "lr_milestones": (0.25, 0.375)}
