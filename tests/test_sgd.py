"""LocalSGD is torch.optim.SGD's update without torch.optim's import cost: same bits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fedbench.training.adam import LocalAdam
from fedbench.training.sgd import LocalSGD


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def _train(model: nn.Module, make, steps: int = 4) -> list[torch.Tensor]:
    model[0].weight.requires_grad_(False)  # a frozen tensor: no gradient, skipped
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make(params)
    data = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        x = torch.randn(8, 6, generator=data)
        y = torch.randint(0, 3, (8,), generator=data)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("foreach", [False, True])
def test_local_sgd_updates_are_bit_identical_to_torch_optim_sgd(foreach):
    hyper = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "foreach": foreach}
    ours = _train(_model(), lambda p: LocalSGD(p, **hyper))
    torch_sgd = _train(_model(), lambda p: torch.optim.SGD(p, **hyper))
    assert all(torch.equal(a, b) for a, b in zip(ours, torch_sgd, strict=True))
    assert not torch.equal(ours[1], _model()[0].bias.detach())  # it did train


def test_local_sgd_state_holds_momentum_buffers_like_torch():
    model = _model()
    params = list(model.parameters())
    opt = LocalSGD(params, lr=0.1, momentum=0.9)
    assert opt.state == {}
    for p in params[1:]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert set(opt.state) == set(params[1:])  # the parameter without a gradient has no buffer
    assert all(torch.equal(s["momentum_buffer"], torch.ones_like(p)) for p, s in opt.state.items())


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_local_adam_updates_are_bit_identical_to_torch_optim_adam(weight_decay):
    ours = _train(_model(), lambda p: LocalAdam(p, lr=2e-3, weight_decay=weight_decay), steps=6)
    torch_adam = _train(_model(), lambda p: torch.optim.Adam(p, lr=2e-3, weight_decay=weight_decay, foreach=False),
                        steps=6)
    assert all(torch.equal(a, b) for a, b in zip(ours, torch_adam, strict=True))
    assert not torch.equal(ours[1], _model()[0].bias.detach())  # it did train
    frozen = _model()[0].weight.detach()
    assert torch.equal(ours[0], frozen)  # no gradient, no update


def test_local_adam_keeps_two_moments_per_trained_tensor_and_refuses_bad_values():
    params = list(_model().parameters())
    opt = LocalAdam(params, lr=0.1)
    for p in params[1:]:
        p.grad = torch.ones_like(p)
    opt.step()
    assert set(opt.state) == set(params[1:]) and all(set(s) == {"exp_avg", "exp_avg_sq"} for s in opt.state.values())
    with pytest.raises(ValueError, match="lr and weight_decay >= 0"):
        LocalAdam(params, lr=-1)


def test_local_sgd_refuses_bad_hyperparameters():
    with pytest.raises(ValueError, match="no parameters"):
        LocalSGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr, momentum and weight_decay >= 0"):
        LocalSGD([nn.Parameter(torch.zeros(1))], lr=-1.0)


def test_a_local_training_step_does_not_import_the_torch_compiler():
    """The reason LocalSGD exists: torch.optim's first optimizer imports torch._dynamo (~1 s)."""
    code = (
        "import sys, torch\n"
        "from fedbench.config import TrainConfig\n"
        "from fedbench.training.loop import make_optimizer\n"
        "m = torch.nn.Linear(3, 2)\n"
        "opt = make_optimizer(m.parameters(), TrainConfig())\n"
        "m(torch.randn(4, 3)).sum().backward(); opt.step()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
