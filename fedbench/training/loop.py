"""The local SGD loop every method shares.

Methods change *what* is trained (the model, which parameters require grad)
and *the loss* (a hook), never the loop, so that speed and determinism fixes
land once for everyone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.config import TrainConfig
from fedbench.data import ImageDataset
from fedbench.training.adam import LocalAdam
from fedbench.training.graphs import (
    CachedStep,
    GraphedSteps,
    StepGraph,
    StepGraphCache,
    graph_reusable,
    is_graph_reusable,
    is_graph_safe,
)
from fedbench.training.sgd import LocalSGD

# (model, images, labels) -> scalar loss. NeuLite adds nHSIC terms, FedProx a proximal term.
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@graph_reusable
def cross_entropy_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


@dataclass(frozen=True)
class LocalResult:
    """What one device's local training produced, besides the weights."""

    num_samples: int
    num_steps: int
    mean_loss: float


def model_device(model: nn.Module) -> torch.device:
    """Where ``model`` computes: the device of its first parameter (CPU for a parameterless one)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def placed_on(model: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """Hold ``model`` on ``device`` for the block and bring it back where it was.

    A no-op on a resident run (the models already live on the device). With
    ``resident: false`` the server keeps every model on the CPU and only the compute
    (local SGD, evaluation) moves to the GPU, one model at a time, so methods need no
    device logic of their own. ``Module.to`` swaps parameters in place: modules that
    share parameters with ``model`` move with it and come back with it.
    """
    device = torch.device(device)
    home = model_device(model)
    if device == home:
        yield model
        return
    # Evaluation runs under inference mode, where new tensors would be inference tensors that no
    # later training step may update in place: the copies are made outside it.
    with torch.inference_mode(False):
        model.to(device)
    try:
        yield model
    finally:
        with torch.inference_mode(False):
            model.to(home)


def make_optimizer(parameters: Iterable[nn.Parameter], train: TrainConfig) -> LocalSGD | LocalAdam:
    """A fresh optimizer each round: no state is carried across rounds (spec common.md §1.3).
    torch.optim's SGD and Adam updates without their import cost (see fedbench.training.sgd)."""
    if train.optimizer == "adam":
        return LocalAdam(parameters, lr=train.lr, weight_decay=train.weight_decay)
    return LocalSGD(parameters, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def _new_step(
    model: nn.Module, trained: list[nn.Parameter], train: TrainConfig, loss_fn: LossFn, max_grad_norm: float | None,
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], LocalSGD | LocalAdam]:
    """One local step over a fresh optimizer: zero grads, loss, backward, clipping, update."""
    optimizer = make_optimizer(trained, train)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, images, labels)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trained, max_grad_norm)
        optimizer.step()
        return loss.detach()

    return step, optimizer


def local_sgd(
    model: nn.Module,
    dataset: ImageDataset,
    indices: torch.Tensor,
    train: TrainConfig,
    generator: torch.Generator,
    loss_fn: LossFn = cross_entropy_loss,
    max_grad_norm: float | None = None,
    graphs: Callable[[], StepGraph] | StepGraphCache | None = None,
) -> LocalResult:
    """``train.local_epochs`` epochs of minibatch SGD on the samples ``indices``, at ``train.lr``.

    A caller other than :meth:`Method.train_client` (which does it) passes the round's setting,
    ``config.train.at_round(round_idx, config.rounds)``, so a run's lr schedule applies.

    Runs where ``model`` is (see :func:`placed_on`). Batches are made where the data set is
    (:meth:`ImageDataset.training_batches`: on the GPU for a resident run, with the epoch's
    order and augmentation choices copied there once per epoch) and moved to the model if that
    is elsewhere. Only parameters with ``requires_grad`` are optimised, so a method freezes a
    part of the model by switching it off before the call. Batches are shuffled
    with ``generator`` (seeded per round and client). The last partial batch is
    kept, except a batch of one sample (``MIN_TRAIN_BATCH``: BatchNorm cannot train on it where
    a feature map is 1×1, so no model trains on it).
    ``max_grad_norm`` clips the global L2 norm of the gradients after every
    backward (HeteroFL/FedRolex clip to 1.0); None: no clipping. With ``graphs`` (a
    :class:`~fedbench.training.graphs.StepGraph` maker: CUDA graphs on a GPU) the full-size steps
    of a loss marked :func:`~fedbench.training.graphs.graph_safe` are replayed from a graph
    captured for this call (:class:`~fedbench.training.graphs.GraphedSteps`), or, where ``graphs``
    is a :class:`~fedbench.training.graphs.StepGraphCache` and the loss is marked
    :func:`~fedbench.training.graphs.graph_reusable`, captured once and replayed for every later
    call over the same model; other losses run eagerly.
    """
    model.train()
    device = model_device(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    # LocalAdam's bias corrections change every step on the host: a graph would freeze them.
    graphed = graphs is not None and is_graph_safe(loss_fn) and train.optimizer == "sgd"
    cache = graphs if graphed and isinstance(graphs, StepGraphCache) and is_graph_reusable(loss_fn) else None
    kept = None
    if cache is not None:  # what a kept graph froze: the loss, the SGD settings, which tensors train, their memory
        settings = (loss_fn, train.batch_size, train.lr, train.momentum, train.weight_decay, max_grad_norm,
                    tuple(p.requires_grad for p in model.parameters()))
        tensors = [*model.parameters(), *model.buffers()]
        kept = cache.find(settings, tensors)
    if kept is not None:
        kept.optimizer.restart()
        step, optimizer = kept.steps, kept.optimizer
    else:
        step, optimizer = _new_step(model, trained, train, loss_fn, max_grad_norm)
        if graphed:
            name = getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__)
            check = not isinstance(graphs, StepGraphCache) or graphs.check_host_reads
            step = GraphedSteps(step, train.batch_size, graphs, name, every_size=cache is not None,
                                check_host_reads=check)
            if cache is not None:
                cache.keep(CachedStep(settings, tensors, step, optimizer))
    num = int(indices.numel())
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    for _ in range(train.local_epochs):
        order = indices[torch.randperm(num, generator=generator)]
        for images, labels in dataset.training_batches(order, train.batch_size, generator):
            total_loss += step(images.to(device), labels.to(device))
            steps += 1
    if graphed and cache is None:  # replayed grads live in the graph's memory pool: let it go with the graph
        optimizer.zero_grad(set_to_none=True)
    return LocalResult(num_samples=num, num_steps=steps, mean_loss=float(total_loss) / max(steps, 1))
