"""Virtual clock: FLOPs ÷ speed + bytes ÷ bandwidth per device; a round lasts as long as its slowest device."""

from __future__ import annotations

import math

import pytest
from torch import nn

from fedbench import engine
from fedbench.config import make_config
from fedbench.errors import ConfigError
from fedbench.models import build_model
from fedbench.reports.costs import stage_round_times
from fedbench.simulation.clock import (
    DeviceCost,
    DeviceTime,
    VirtualClock,
    device_time,
    earliest,
    state_bytes,
)
from fedbench.simulation.fleet import Device
from fedbench.simulation.flops import model_flops


def test_a_hand_computed_round_lasts_as_long_as_its_slowest_device():
    # Linear(4→2): forward 2·4·2 = 16 FLOPs per sample, weight gradient 16 more (the input needs none).
    model = nn.Linear(4, 2)
    clock = VirtualClock(batch_size=8, input_shape=(4,), local_epochs=2)
    assert clock.step_flops(model) == 32
    cost = clock.cost(model, samples=100)  # 32 × 100 samples × 2 epochs
    assert cost == DeviceCost(compute_flops=6400, bytes_down=40, bytes_up=40)  # (8 + 2) floats each way
    fast_compute = device_time(0, cost, Device(0, None, 3200.0, 40.0, "a"))  # 2 s + 80/40 s
    slow_link = device_time(1, cost, Device(1, None, 6400.0, 8.0, "b"))  # 1 s + 80/8 s
    assert (fast_compute.compute_s, fast_compute.comm_s) == (2.0, 2.0)
    assert (slow_link.compute_s, slow_link.comm_s) == (1.0, 10.0)
    assert clock.advance([fast_compute, slow_link]) == {"clock/round_s": 11.0, "clock/total_s": 11.0}
    assert clock.advance([fast_compute]) == {"clock/round_s": 4.0, "clock/total_s": 15.0}
    assert clock.now.rounds == 2


def test_full_model_training_flops_equal_the_per_block_forward_and_backward_sum():
    model = build_model("cnn", (1, 28, 28), 10, width=0.5)
    clock = VirtualClock(batch_size=4, input_shape=(1, 28, 28), local_epochs=1)
    assert clock.step_flops(model) == model_flops("cnn", (1, 28, 28), 10, 0.5).total.training


def test_a_frozen_prefix_costs_only_its_forward():
    model = build_model("cnn", (1, 28, 28), 10, width=0.5)
    clock = VirtualClock(batch_size=4, input_shape=(1, 28, 28), local_epochs=1)
    head_only = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    flops = model_flops("cnn", (1, 28, 28), 10, 0.5)
    # the head alone on its input (which needs no gradient): its forward and its weight gradients
    head_clock = VirtualClock(batch_size=4, input_shape=model.block_output_shapes()[-1], local_epochs=1)
    head_step = head_clock.step_flops(model.head)
    assert clock.step_flops(model, head_only) == flops.total.forward - flops.head.forward + head_step
    assert clock.step_flops(model, head_only) < clock.step_flops(model)


def test_every_neulite_stage_round_of_resnet18_is_shorter_than_a_full_model_round():
    rows = stage_round_times("resnet18", (3, 32, 32), 10, batch_size=64, samples=500, epochs=5,
                             device_class_name="jetson-tx2")
    assert [r.label for r in rows] == ["block 1", "block 2", "block 3", "block 4", "full"]
    full = rows[-1]
    assert full.compute_s == pytest.approx(
        model_flops("resnet18", (3, 32, 32), 10).total.training * 500 * 5 / (256 * 2 * 1.465e9)
    )
    for stage in rows[:-1]:
        assert stage.compute_s < full.compute_s and stage.total_s < full.total_s
    # Each stage moves its projection MLP both ways, as NeuLite's runs price it (spec neulite §2.5):
    # block 4 (8.4 M parameters, the MLP's 3.7 M, the frozen prefix's download) moves more than
    # the full model.
    assert rows[3].comm_s > full.comm_s > rows[0].comm_s


def test_over_commitment_keeps_the_devices_that_finish_first():
    times = [DeviceTime(0, 3.0, 0.0), DeviceTime(1, 1.0, 0.0), DeviceTime(2, 1.0, 1.0), DeviceTime(3, 0.5, 0.0)]
    assert [t.client_id for t in earliest(times, 2)] == [3, 1]
    tied = [DeviceTime(5, 1.0, 0.0), DeviceTime(2, 1.0, 0.0), DeviceTime(9, 1.0, 0.0)]
    assert [t.client_id for t in earliest(tied, 2)] == [5, 2]  # a tie keeps the order given


@pytest.mark.parametrize("speed, bandwidth, bad", [(0.0, 1.0, "flops_per_s"), (1.0, -5.0, "bandwidth_bytes_per_s"),
                                                   (math.nan, 1.0, "flops_per_s")])
def test_a_device_without_positive_speed_or_bandwidth_is_a_one_line_error(speed, bandwidth, bad):
    with pytest.raises(ConfigError, match=rf"device 7: {bad} .* must be a positive number") as err:
        device_time(7, DeviceCost(1.0, 1, 1), Device(7, None, speed, bandwidth, "custom"))
    assert "\n" not in str(err.value)


def test_the_engine_logs_each_rounds_slowest_device_and_the_cumulative_time():
    config = make_config(overrides={
        "method": "exclusivefl", "data": {"dataset": "synthetic", "num_clients": 10, "partition": "iid"},
        "train": {"local_epochs": 1, "batch_size": 32}, "model": {"name": "cnn", "width": 0.25},
        "fleet": {"profile": "relative"}, "clients_per_round": 3, "rounds": 2, "tracking": {"enabled": False},
    })
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    results = engine.run_rounds(method)
    expected = []
    for round_idx in range(2):
        times = [method.device_time(a) for a in method.assign(round_idx)]
        expected.append(max(t.total_s for t in times))
        for t in times:
            device = ctx.fleet.devices[t.client_id]
            shard = int(ctx.data.shards[t.client_id].numel())
            assert t.compute_s == pytest.approx(ctx.clock.step_flops(method.global_model) * shard / device.flops_per_s)
            assert t.comm_s == pytest.approx(2 * state_bytes(method.global_model) / device.bandwidth_bytes_per_s)
    assert [r.metrics["clock/round_s"] for r in results] == pytest.approx(expected)
    assert [r.metrics["clock/total_s"] for r in results] == pytest.approx([expected[0], sum(expected)])
