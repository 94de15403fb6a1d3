"""The local SGD update, without ``torch.optim.Optimizer``.

Constructing the first ``torch.optim.Optimizer`` in a process imports torch's compiler (its
``add_param_group`` is wrapped by a guard that loads it on first call), a cost every worker
process of the process executor would pay before its first update. fedbench needs none of the
Optimizer machinery (hooks, param groups, state dicts: the optimizer is rebuilt each round,
spec common.md §1.3), so :class:`LocalSGD` keeps the parameters and momentum buffers itself
and calls torch's functional ``torch.optim.sgd.sgd`` — the same kernels as ``torch.optim.SGD``,
so the updates are bit-identical (tests/test_sgd.py), with the same per-tensor path on CPU and
multi-tensor (``foreach``) path on CUDA by default. It also tells the memory model what its
update allocates, so the model need not trace it op by op (:meth:`LocalSGD.update_temporaries`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import torch
from torch import nn
from torch.optim.sgd import sgd

from fedbench.tracing import meta as meta_outputs


class StepOptimizer(Protocol):
    """What the local loop and the memory model need of an optimizer; ``torch.optim`` optimizers
    qualify, so a :class:`fedbench.memory.model.MemoryModel` can be given any of them."""

    state: dict

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def step(self) -> None: ...


def clear_grads(params: Iterable[nn.Parameter], set_to_none: bool = True) -> None:
    """``torch.optim.Optimizer.zero_grad`` for a list of parameters."""
    for param in params:
        if param.grad is None:
            continue
        if set_to_none:
            param.grad = None
        else:
            param.grad.detach_().zero_()


class LocalSGD:
    """SGD with momentum and L2 weight decay, exactly ``torch.optim.SGD``'s update.

    ``foreach=None`` lets torch pick the path as ``torch.optim.SGD`` does (multi-tensor when every
    parameter is on CUDA); parameters without a gradient are skipped and keep their buffers.
    """

    def __init__(
        self,
        parameters: Iterable[nn.Parameter],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        self.params = list(parameters)
        if not self.params:
            raise ValueError("LocalSGD got no parameters to optimise")
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"LocalSGD needs lr, momentum and weight_decay >= 0, got {lr}, {momentum}, {weight_decay}"
            )
        self.lr, self.momentum, self.weight_decay, self.foreach = lr, momentum, weight_decay, foreach
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @property
    def state(self) -> dict[nn.Parameter, dict[str, torch.Tensor]]:
        """The momentum buffers keyed like ``torch.optim.Optimizer.state``."""
        return {
            p: {"momentum_buffer": buf}
            for p, buf in zip(self.params, self.momentum_buffers, strict=True)
            if buf is not None
        }

    def allocate_state(self) -> None:
        """Create the momentum buffers a first step would (uninitialised, on the parameters'
        device). The memory model needs the steady state's tensors, not their values; on the meta
        device a warm-up step is a sizeable share of a ``fedbench memory`` table."""
        if self.momentum:
            self.momentum_buffers = [
                meta_outputs.empty_like(p) if buf is None else buf
                for p, buf in zip(self.params, self.momentum_buffers, strict=True)
            ]

    def update_temporaries(self) -> list[int] | None:
        """Bytes of each temporary the next :meth:`step` allocates, in order; each is freed before
        the next one is made. ``None`` where that does not describe the update.

        The memory model asks, rather than tracing the update op by op: torch's per-tensor SGD
        makes one new tensor per parameter with a gradient, ``grad + weight_decay * param``, and
        drops it once the momentum buffer has taken it in; buffers and weights change in place.
        Tracing that is four dispatched ops per parameter, half the ops of a ResNet's step.
        ``None`` for the multi-tensor (``foreach``) update, whose temporaries are alive together,
        for a first step that still creates momentum buffers, and when ``foreach`` is left to torch
        (``None``: which path it takes is torch's own, private rule): the caller traces
        :meth:`step` then. tests/test_memory.py holds both ways to the same report.
        """
        with_grad = [(p, buf) for p, buf in zip(self.params, self.momentum_buffers, strict=True) if p.grad is not None]
        if not with_grad:
            return []
        if self.foreach is not False or (self.momentum and any(buf is None for _, buf in with_grad)):
            return None
        if not self.weight_decay:
            return []
        return [p.grad.numel() * torch.promote_types(p.grad.dtype, p.dtype).itemsize for p, _ in with_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        clear_grads(self.params, set_to_none)

    @torch.no_grad()
    def restart(self) -> None:
        """Zero the momentum buffers in place, for the next client's training over the same
        parameters: the first update then makes each buffer ``0 · momentum + grad``, exactly the
        gradient a fresh optimizer's first update copies in, and the buffers keep their memory
        (a captured CUDA graph reads them there)."""
        for buf in self.momentum_buffers:
            if buf is not None:
                buf.zero_()

    @torch.no_grad()
    def step(self) -> None:
        with_grad = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not with_grad:
            return
        buffers = [self.momentum_buffers[i] for i in with_grad]
        sgd(
            [self.params[i] for i in with_grad],
            [self.params[i].grad for i in with_grad],
            buffers,
            foreach=self.foreach,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        if self.momentum:  # the functional update fills in the buffers it created
            for i, buf in zip(with_grad, buffers, strict=True):
                self.momentum_buffers[i] = buf
