"""FedProx plugin: mu = 0 is FedAvg, the proximal gradient is mu * (w - w_global), and
fedbench finds the method through the installed distribution's entry point."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from fedbench_fedprox import FedProx, FedProxOptions, proximal_term
from torch import nn

from fedbench.api import (
    Assignment,
    ClientContext,
    ConfigError,
    Method,
    cross_entropy_loss,
    make_config,
    prepare,
    run_rounds,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    """The synthetic set, 6 clients, 2 of them per round, 2 rounds of one local epoch."""
    return make_config(
        overrides={
            "method": "fedprox",
            "data": {"dataset": "synthetic", "num_clients": 6, "partition": "iid"},
            "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
            "model": {"name": "cnn", "width": 0.25},
            "clients_per_round": 2,
            "rounds": 2,
            "tracking": {"enabled": False},
        }
    )


def _final_state(method_cls: type[Method], config, **options) -> dict[str, torch.Tensor]:
    ctx, _ = prepare(config)
    method = method_cls(ctx, method_cls.parse_options(options))
    run_rounds(method)
    return method.global_model.state_dict()


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(tiny_config):
    fedavg = _final_state(Method, tiny_config)  # the base class's hooks are FedAvg
    fedprox = _final_state(FedProx, tiny_config, mu=0.0)
    assert fedavg.keys() == fedprox.keys()
    for key in fedavg:
        assert torch.equal(fedavg[key], fedprox[key]), key


def test_a_positive_mu_keeps_local_weights_closer_to_the_global_ones(tiny_config):
    config = dataclasses.replace(tiny_config, rounds=1)
    ctx, _ = prepare(config)
    start = {k: v.clone() for k, v in FedProx(ctx).global_model.state_dict().items()}

    def drift(mu: float) -> float:
        ctx, _ = prepare(config)
        method = FedProx(ctx, FedProx.parse_options({"mu": mu}))
        (assignment, *_) = method.assign(0)
        update = method.local_update(ClientContext.of(ctx, assignment, 0))
        names = [n for n, _ in method.global_model.named_parameters()]
        return sum(float((update.state[n] - start[n]).pow(2).sum()) for n in names)

    assert drift(1.0) < drift(0.0)


def test_the_proximal_term_and_its_gradient_on_a_hand_example():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0]]))
    anchor = {"weight": torch.tensor([[0.5, -1.0]])}
    mu = 0.1
    term = mu / 2 * proximal_term(layer, anchor)
    term.backward()
    # (1 - 0.5)^2 + (2 + 1)^2 = 9.25; times mu / 2 = 0.4625; gradient mu * (w - anchor).
    assert term.item() == pytest.approx(0.4625)
    assert torch.allclose(layer.weight.grad, torch.tensor([[0.05, 0.3]]))


def test_fedprox_loss_adds_exactly_the_proximal_gradient(tiny_config):
    ctx, _ = prepare(tiny_config)
    method = FedProx(ctx, FedProxOptions(mu=0.5))
    client = ClientContext.of(ctx, Assignment(0), 0)
    client.start_weights = {n: p.detach().clone() for n, p in method.global_model.named_parameters()}
    model = method.worker_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # w - w_global = 0.01 everywhere
    images, labels = ctx.data.dataset.train_batch(torch.arange(8), torch.Generator().manual_seed(0))

    def grads(loss_fn) -> list[torch.Tensor]:
        model.zero_grad()
        loss_fn(model, images, labels).backward()
        return [p.grad.clone() for p in model.parameters()]

    extra = [g - g0 for g, g0 in zip(grads(lambda m, x, y: method.loss(m, x, y, client)), grads(cross_entropy_loss),
                                      strict=True)]
    for g in extra:
        assert torch.allclose(g, torch.full_like(g, 0.5 * 0.01), atol=1e-6)


def test_a_negative_mu_is_rejected_with_the_fix():
    with pytest.raises(ConfigError, match=r"option mu \(-1.0\) must be a finite number >= 0"):
        FedProx.parse_options({"mu": -1})


def _fedbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedbench.cli.main", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_fedbench_lists_fedprox_with_its_distribution():
    result = _fedbench("list", "methods", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["methods"]}
    assert rows["fedprox"]["distribution"] == "fedbench-fedprox"
    assert rows["fedprox"]["object"] == "fedbench_fedprox:FedProx"
    assert not rows["fedprox"]["builtin"] and rows["fedavg"]["builtin"]


def test_a_bad_mu_on_the_command_line_is_one_line_and_exit_2():
    result = _fedbench("run", "--method", "fedprox", "--dataset", "synthetic", "--clients", "4",
                       "--clients-per-round", "2", "--rounds", "1", "--local-epochs", "1",
                       "--no-tracking", "--opt", "mu=-1")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: option mu (-1.0) must be a finite number >= 0")
    assert len(result.stderr.strip().splitlines()) == 1


def test_fedprox_passes_fedbench_conformance_kit():
    from fedbench.testing import check_method

    report = check_method(FedProx, {"mu": 0.1})
    assert not report.skipped, report.skipped
