"""ExclusiveFL: FedAvg among the devices that fit the full model; PR logged; no fit fails early."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from fedbench import engine
from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.errors import MemoryBudgetError

runner = CliRunner()


def config_with(fleet: dict, method: str = "exclusivefl", **extra):
    return make_config(
        overrides={
            "method": method,
            "data": {"dataset": "synthetic", "num_clients": 10, "partition": "iid"},
            "train": {"local_epochs": 1, "batch_size": 64, "lr": 0.05},  # the relative fleet's reference batch
            "model": {"name": "cnn", "width": 0.25},
            "fleet": fleet,
            "clients_per_round": 3,
            "rounds": 2,
            "tracking": {"enabled": False},
            **extra,
        }
    )


def test_exclusivefl_trains_only_devices_that_fit_the_full_model_and_logs_their_share():
    ctx, _ = engine.prepare(config_with({"profile": "relative"}))
    method = engine.make_method(ctx)
    fitting = set(ctx.fleet.eligible(ctx.full_model_peak_bytes()))
    assert set(method.eligible_ids) == fitting and len(fitting) == 2  # 20 % of 10, as for ResNet18
    results = engine.run_rounds(method)
    for round_idx in range(2):
        assert {a.client_id for a in method.assign(round_idx)} <= fitting
    assert [r.metrics["round/clients"] for r in results] == [2.0, 2.0]
    assert results[-1].metrics["participation/rate"] == pytest.approx(0.2)
    assert results[-1].metrics["participation/full_model_rate"] == pytest.approx(0.2)


def test_fedavg_ignores_memory_but_logs_the_share_that_fits_the_full_model():
    result = engine.run(config_with({"profile": "relative"}, method="fedavg", rounds=1))
    assert result.metric("participation/rate")[-1] == 1.0
    assert result.metric("participation/full_model_rate")[-1] == pytest.approx(0.2)


def test_a_method_whose_work_fits_no_device_fails_before_round_one():
    config = config_with({"profile": "uniform-mb", "low_mb": 1, "high_mb": 1}, model={"name": "cnn", "width": 1.0})
    ctx, _ = engine.prepare(config)
    with pytest.raises(MemoryBudgetError, match=r"no device can train cnn \(needs .* at batch 64; largest budget 1.0 MiB\)"):
        engine.make_method(ctx)


def test_fedbench_run_reports_a_method_that_fits_no_device_in_one_line_with_exit_code_2():
    result = runner.invoke(app, [
        "run", "--method", "exclusivefl", "--dataset", "synthetic", "--model", "cnn", "--clients", "10",
        "--clients-per-round", "3", "--rounds", "1", "--fleet", "uniform-mb", "--low-mb", "1", "--high-mb", "1",
        "--no-tracking",
    ])
    assert result.exit_code == 2
    assert "no device can train cnn" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_exclusivefl_logs_its_participation_rate_to_mlflow(tracking_uri):
    import mlflow

    from fedbench.tracking.tracker import MlflowTracker

    config = config_with({"profile": "relative"}, rounds=1)
    config = dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, enabled=True))
    tracker = MlflowTracker(tracking_uri, "test-exclusivefl", None)
    engine.run(config, tracker=tracker)
    history = mlflow.MlflowClient(tracking_uri).get_metric_history(tracker.run_id, "participation/rate")
    assert [m.value for m in history] == [pytest.approx(0.2)]
