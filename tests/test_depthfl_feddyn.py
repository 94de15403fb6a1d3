"""DepthFL's FedDyn term: the fused form local training uses (one autograd node over flat vectors)
gives the reference per-tensor form's loss and gradients, costs a fixed number of kernels whatever
the number of parameter tensors, and leaves the memory model on the reference form."""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fedbench import engine
from fedbench.config import make_config
from fedbench.methods.depthfl import (
    DepthFL,
    DepthFLLocal,
    DepthFLLoss,
    DepthFLOptions,
    FedDynTerm,
    RampedDepthFLLoss,
    consistency_weight,
    offered_depths,
)
from fedbench.models import build_model
from fedbench.models.cutting import ExitModel, exit_heads
from fedbench.training.sgd import LocalSGD

ALPHA = 0.1
# Ops that make no kernel: views, aliases and dtype queries (the fused term's per-tensor views).
METADATA_OPS = frozenset({
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::slice", "aten::narrow",
    "aten::split", "aten::split_with_sizes", "aten::view_as", "aten::alias", "aten::detach", "aten::expand",
    "aten::result_type",
})


@pytest.fixture(autouse=True)
def one_thread():
    """Every op here is tiny: one torch thread spares them waiting on each other on a busy machine.
    Nothing asserted depends on the thread count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def local_at(depth: int | None = None, seed: int = 0) -> DepthFLLocal:
    """A tiny ResNet18 exit model of ``depth`` (default: all blocks) with random FedDyn vectors."""
    torch.manual_seed(seed)
    model = build_model("resnet18", (3, 16, 16), 10, width=0.0625)
    depths = offered_depths(model, None)
    depth = depths[-1] if depth is None else depth
    local = DepthFLLocal(ExitModel(model, exit_heads(model, depths[:-1]), depth), model, depth, feddyn=True)
    with torch.no_grad():
        local.feddyn.g.normal_(std=0.01)
        local.feddyn.anchor.add_(torch.randn_like(local.feddyn.anchor), alpha=0.05)
    return local


def batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 16, 16, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def loss_and_gradients(local: DepthFLLocal, loss_fn: DepthFLLoss) -> tuple[torch.Tensor, list[torch.Tensor]]:
    local.zero_grad(set_to_none=True)
    images, labels = batch()
    loss = loss_fn(local, images, labels)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in local.net.parameters()]


@pytest.mark.parametrize("kd_weight", [0.0, 1.0])
def test_fused_feddyn_gives_the_reference_loss_and_gradients(kd_weight):
    local = local_at()
    reference = DepthFLLoss(1.0, kd_weight, ALPHA)
    loss, grads = loss_and_gradients(local, reference)
    fused_loss, fused_grads = loss_and_gradients(local, dataclasses.replace(reference, fused=True))
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-5)
    for fused, expected in zip(fused_grads, grads, strict=True):
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    without, _ = loss_and_gradients(local, dataclasses.replace(reference, alpha=0.0))
    assert float(loss - without) != 0.0  # the term is there (g and θ^t differ from zero and from θ)


@pytest.mark.parametrize("round_idx", [0, 37, 150, 299, 300, 1000])
def test_the_ramped_loss_holds_the_rounds_weight_in_a_tensor_and_trains_as_the_number_would(round_idx):
    options = DepthFLOptions(alpha=ALPHA)
    local, ramped = local_at(), RampedDepthFLLoss(options)
    before = ramped.for_round(0, torch.device("cpu")).kd_weight
    assert ramped.for_round(round_idx, torch.device("cpu")) is ramped and ramped.kd_weight is before  # refilled in place
    weight = consistency_weight(round_idx, options.rampup_rounds)
    loss, grads = loss_and_gradients(local, DepthFLLoss(1.0, weight, ALPHA, fused=True))
    ramped_loss, ramped_grads = loss_and_gradients(local, ramped)
    assert torch.equal(ramped_loss, loss)
    assert all(torch.equal(a, b) for a, b in zip(ramped_grads, grads, strict=True))


def test_the_ramped_loss_without_distillation_or_feddyn_is_the_plain_loss():
    local = local_at()
    ramped = RampedDepthFLLoss(DepthFLOptions(kd=False, feddyn=False)).for_round(5, torch.device("cpu"))
    assert ramped.kd_weight is None
    loss, _ = loss_and_gradients(local, DepthFLLoss(1.0, 0.0, 0.0))
    assert torch.equal(loss_and_gradients(local, ramped)[0], loss)


def test_the_fused_gradient_is_the_networks_plus_the_terms_bit_for_bit():
    local = local_at()
    _, network = loss_and_gradients(local, DepthFLLoss(1.0, 1.0, 0.0, fused=True))
    _, fused = loss_and_gradients(local, DepthFLLoss(1.0, 1.0, ALPHA, fused=True))
    for grad, net_grad, param, (g, anchor) in zip(fused, network, local.net.parameters(), local.feddyn.pairs(), strict=True):
        assert torch.equal(grad, net_grad + (param.detach() - anchor).mul(ALPHA).sub(g))


def test_fused_term_is_the_spec_sum_with_its_exact_gradient():
    torch.manual_seed(0)
    params = [torch.randn(3, 2, dtype=torch.float64, requires_grad=True),
              torch.randn(4, dtype=torch.float64, requires_grad=True)]
    g, anchor = torch.randn(10, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    value, *aliases = FedDynTerm.apply(g, anchor, 0.3, *params)
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    expected = -(theta * g).sum() + 0.15 * ((theta - anchor) ** 2).sum()
    torch.testing.assert_close(value.detach(), expected)
    assert all(torch.equal(a, p) and a.data_ptr() == p.data_ptr() for a, p in zip(aliases, params, strict=True))
    # the parameters it hands on carry the network's gradient, to which the term's is added
    weights = [torch.randn_like(p) for p in params]

    def term_and_network(*ps: torch.Tensor) -> torch.Tensor:
        value, *aliases = FedDynTerm.apply(g, anchor, 0.3, *ps)
        return value + sum((a * w).sum() for a, w in zip(aliases, weights, strict=True))

    assert torch.autograd.gradcheck(term_and_network, tuple(params))


def test_feddyn_state_is_one_flat_buffer_each_with_per_parameter_views():
    local = local_at(depth=1)
    params = list(local.net.parameters())
    assert [name for name, _ in local.feddyn.named_buffers()] == ["g", "anchor"]
    for param, (g, anchor) in zip(params, local.feddyn.pairs(), strict=True):
        assert g.shape == anchor.shape == param.shape
        assert g.untyped_storage().data_ptr() == local.feddyn.g.untyped_storage().data_ptr()
    local.feddyn.pairs()[-1][0].fill_(3.0)  # a write through a view is a write to the flat buffer
    assert float(local.feddyn.g[-1]) == 3.0


def step_ops(local: DepthFLLocal, loss_fn: DepthFLLoss) -> collections.Counter:
    """The aten ops of one local step (zero_grad, loss, backward, SGD update), metadata ops left out."""
    optimizer = LocalSGD(list(local.net.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = batch(4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(local, images, labels).backward()
        optimizer.step()

    step()  # momentum buffers exist: the steady state
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return collections.Counter(
        e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in METADATA_OPS)


def test_fused_feddyn_adds_a_fixed_number_of_kernels_whatever_the_number_of_parameter_tensors():
    """One step's FedDyn cost, fused: a constant number of ops, the sum of each parameter's two
    gradient contributions (the network's and FedDyn's) included, where the per-tensor form runs
    about eight kernels forward and eight backward per tensor. Measured on a shallow and a deep
    exit model."""
    extras, counts = {}, {}
    for depth in (1, 4):
        local = local_at(depth)
        counts[depth] = sum(1 for _ in local.net.parameters())
        base = step_ops(local, DepthFLLoss(1.0, 1.0, 0.0, fused=True))  # the same distillation, no FedDyn
        fused = step_ops(local, DepthFLLoss(1.0, 1.0, ALPHA, fused=True))
        reference = step_ops(local, DepthFLLoss(1.0, 1.0, ALPHA))
        extras[depth] = fused - base
        assert not base - fused  # the fused step runs everything the plain step does
        assert (reference - base).total() >= 8 * counts[depth]  # the per-tensor form, for contrast
    assert counts[4] > 2 * counts[1]
    assert extras[1] == extras[4], extras  # independent of the number of tensors
    assert extras[4].total() <= 30, extras[4]


def test_the_memory_model_traces_the_reference_form_and_training_uses_the_fused_one(monkeypatch):
    model = build_model("resnet18", (3, 16, 16), 10, width=0.0625)
    assert all(not w.loss_fn.fused for w in DepthFL.workloads(model, DepthFLOptions()))
    ctx, _ = engine.prepare(make_config(overrides={
        "method": "depthfl", "data": {"dataset": "synthetic", "num_clients": 4, "partition": "iid"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05}, "model": {"name": "cnn", "width": 0.25},
        "fleet": {"profile": "homogeneous"}, "clients_per_round": 1, "rounds": 1, "threads": 1,
        "tracking": {"enabled": False},
    }))
    method = engine.make_method(ctx)
    assert not method.memory_loss.fused
    used = []
    train_client = DepthFL.train_client

    def spy(self, model, client, **kwargs):  # noqa: ANN001, ANN202
        used.append(kwargs["loss_fn"])
        return train_client(self, model, client, **kwargs)

    monkeypatch.setattr(DepthFL, "train_client", spy)
    engine.run_round(method, 0)
    assert used and all(loss.fused and loss.options.alpha == ALPHA for loss in used)
