"""The local Adam update (``train.optimizer: adam``), without ``torch.optim.Optimizer``.

For the reasons :mod:`fedbench.training.sgd` gives, and one more: ``torch.optim.Adam`` keeps its
step count in a tensor and reads it back to compute the bias corrections, which the memory
model's meta tensors cannot answer. :class:`LocalAdam` counts steps in Python and otherwise
performs ``torch.optim.Adam``'s per-tensor update (no AMSGrad, L2 weight decay added to the
gradient) op for op, so the updates are bit-identical on the CPU (tests/test_sgd.py), and the
memory model traces exactly the update that trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from fedbench.training.sgd import clear_grads

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8


class LocalAdam:
    """Adam with L2 weight decay; parameters without a gradient are skipped and keep their state."""

    def __init__(self, parameters: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0) -> None:
        self.params = list(parameters)
        if not self.params:
            raise ValueError("LocalAdam got no parameters to optimise")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"LocalAdam needs lr and weight_decay >= 0, got {lr}, {weight_decay}")
        self.lr, self.weight_decay = lr, weight_decay
        self.steps = [0] * len(self.params)
        self.moments: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.params)

    @property
    def state(self) -> dict[nn.Parameter, dict[str, torch.Tensor]]:
        """The moment estimates keyed like ``torch.optim.Optimizer.state``."""
        return {
            p: {"exp_avg": m[0], "exp_avg_sq": m[1]}
            for p, m in zip(self.params, self.moments, strict=True)
            if m is not None
        }

    def zero_grad(self, set_to_none: bool = True) -> None:
        clear_grads(self.params, set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = BETAS
        for i, param in enumerate(self.params):
            grad = param.grad
            if grad is None:
                continue
            if self.moments[i] is None:
                self.moments[i] = (torch.zeros_like(param, memory_format=torch.preserve_format),
                                   torch.zeros_like(param, memory_format=torch.preserve_format))
            exp_avg, exp_avg_sq = self.moments[i]  # type: ignore[misc]
            self.steps[i] += 1
            step = self.steps[i]
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = self.lr / bias_correction1
            bias_correction2_sqrt = math.sqrt(bias_correction2)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
            param.addcdiv_(exp_avg, denom, value=-step_size)
