"""End-to-end behaviour of the round loop on tiny data."""

from __future__ import annotations

import dataclasses

import torch

from fedbench import engine
from fedbench.config import make_config
from fedbench.core.method import ClientContext, Method
from fedbench.training.loop import local_sgd


def _deterministic(result):
    return [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in result.rounds]


def test_same_seed_gives_identical_per_round_metrics(tiny_config):
    first = engine.run(tiny_config)
    second = engine.run(tiny_config)
    assert _deterministic(first) == _deterministic(second)
    assert len(first.rounds) == tiny_config.rounds


def test_a_different_seed_gives_different_metrics(tiny_config):
    other = dataclasses.replace(tiny_config, seed=7)
    assert _deterministic(engine.run(tiny_config)) != _deterministic(engine.run(other))


def test_fedavg_learns_the_synthetic_task(tiny_config):
    config = dataclasses.replace(tiny_config, rounds=6)
    result = engine.run(config)
    accuracy = result.metric("eval/accuracy")
    assert accuracy[-1] > 0.5 > 0.1 + 1e-9  # chance is 0.1
    assert all(torch.isfinite(torch.tensor(result.metric("train/loss"))))


def test_fedavg_with_one_client_and_one_step_equals_one_sgd_step(tiny_config):
    config = make_config(
        overrides={
            "method": "fedavg",
            "data": {"dataset": "synthetic", "num_clients": 1, "partition": "iid"},
            "train": {"local_epochs": 1, "batch_size": 10_000, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
            "model": {"width": 0.25},
            "clients_per_round": 1,
            "rounds": 1,
        }
    )
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    reference = ctx.build_model()
    reference.load_state_dict(method.global_model.state_dict())

    engine.run_rounds(method)

    generator = ctx.client_generator(0, 0)
    local_sgd(reference, ctx.data.dataset, ctx.data.shards[0], config.train, generator)
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(method.global_model.state_dict()[key], value)


def test_client_work_does_not_depend_on_training_order(tiny_config):
    ctx, _ = engine.prepare(tiny_config)
    method = engine.make_method(ctx)
    assignments = method.assign(0)
    forward = [method.local_update(ClientContext.of(ctx, a, 0)).state for a in assignments]
    backward = [method.local_update(ClientContext.of(ctx, a, 0)).state for a in reversed(assignments)][::-1]
    for f, b in zip(forward, backward, strict=True):
        for key in f:
            assert torch.equal(f[key], b[key])


def test_selection_draws_k_distinct_clients_from_the_eligible_set(tiny_config):
    ctx, _ = engine.prepare(tiny_config)
    chosen = ctx.sample_clients(3, eligible=[1, 4, 6, 7])
    assert len(chosen) == 3 and set(chosen) <= {1, 4, 6, 7} and len(set(chosen)) == 3
    assert ctx.sample_clients(3, eligible=[5]) == [5]
    assert ctx.sample_clients(3, eligible=[]) == []


class _CountingMethod(Method):
    calls: list[str] = []

    def aggregate(self, round_idx, updates):
        self.calls.append(f"aggregate{round_idx}:{len(updates)}")
        super().aggregate(round_idx, updates)


def test_engine_calls_the_method_hooks_every_round(tiny_config):
    ctx, _ = engine.prepare(tiny_config)
    method = _CountingMethod(ctx)
    _CountingMethod.calls = []
    engine.run_rounds(method)
    assert _CountingMethod.calls == ["aggregate0:3", "aggregate1:3"]


def test_client_shards_are_index_arrays_that_cover_the_train_set_once(tiny_config):
    ctx, _ = engine.prepare(tiny_config)
    assert all(shard.dtype == torch.int64 for shard in ctx.data.shards)
    joined = torch.cat(ctx.data.shards).sort().values
    assert torch.equal(joined, torch.arange(ctx.data.dataset.num_train))


def test_info_plane_logs_every_blocks_nhsic_for_fedavg_on_evaluation_rounds_only(tiny_config):
    config = dataclasses.replace(tiny_config, rounds=3, eval_every=2, info_plane=2)
    result = engine.run(config)
    logged = [sorted(k for k in r.metrics if k.startswith("nhsic/")) for r in result.rounds]
    blocks = engine.make_method(engine.prepare(config)[0]).global_model.num_blocks
    expected = sorted(f"nhsic/{t}/block{b}" for t in ("xz", "yz") for b in range(1, blocks + 1))
    assert logged == [[], expected, expected]  # evaluation rounds 2 and 3 (the last)
    assert all(0.0 <= result.rounds[1].metrics[k] <= 1.0 + 1e-6 for k in expected)
    assert not any(k.startswith("nhsic/") for r in engine.run(tiny_config).rounds for k in r.metrics)  # off by default


def test_a_negative_info_plane_probe_is_a_one_line_config_error(tiny_config):
    import pytest

    from fedbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"info_plane \(-1\) must be >= 0"):
        dataclasses.replace(tiny_config, info_plane=-1)


def test_the_round_training_loss_averages_only_clients_that_trained_a_step(tiny_config, monkeypatch):
    """1,200 samples over 700 clients: 200 of them hold one sample, train no step and report a loss
    of 0, which must not pull the round's `train/loss` down."""
    config = dataclasses.replace(tiny_config, clients_per_round=40, rounds=1,
                                 data=dataclasses.replace(tiny_config.data, num_clients=700))
    seen = []
    run_updates = engine.SerialExecutor.local_updates

    def recording(self, method, assignments, round_idx):
        updates = run_updates(self, method, assignments, round_idx)
        seen.extend(updates)
        return updates

    monkeypatch.setattr(engine.SerialExecutor, "local_updates", recording)
    (result,) = engine.run_rounds(engine.make_method(engine.prepare(config)[0]))
    idle = [u for u in seen if u.num_steps == 0]
    trained = [u for u in seen if u.num_steps > 0]
    assert idle and trained and all(u.loss == 0.0 for u in idle)
    assert result.metrics["train/loss"] == sum(u.loss for u in trained) / len(trained)
