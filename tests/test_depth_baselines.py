"""DepthFL and ProgFed (issue 9): exits, distillation, FedDyn, holder averaging, depth and stage
assignment under memory budgets, the growth schedule, bad input, and short end-to-end runs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import pytest
import torch

from fedbench import engine, registry
from fedbench.config import make_config
from fedbench.core.method import Method
from fedbench.errors import ConfigError, MemoryBudgetError
from fedbench.methods.depthfl import (
    DepthFL,
    DepthFLOptions,
    consistency_weight,
    deepest_fitting_depth,
    distillation_loss,
    feddyn_client_state,
    fused_distillation_loss,
    holder_average,
)
from fedbench.methods.progfed import ProgFed, default_update_cycle, stage_schedule
from fedbench.models import build_model
from fedbench.models.cutting import ExitModel, exit_heads
from fedbench.simulation.fleet import Device, Fleet


def config_with(method: str, model: dict | None = None, fleet: dict | None = None, **extra):
    return make_config(overrides={
        "method": method,
        "data": {"dataset": "synthetic", "num_clients": 6, "partition": "iid"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "model": model or {"name": "cnn", "width": 0.25},
        "fleet": fleet or {"profile": "homogeneous"},
        "clients_per_round": 2,
        "rounds": 2,
        "eval_batch_size": 300,
        "tracking": {"enabled": False},
        **extra,
    })


# ------------------------------------------------------------------------ DepthFL
@pytest.mark.parametrize("name", ["cnn", "resnet18", "resnet34", "vgg11_bn", "squeezenet", "vit"])
def test_every_exit_of_every_model_returns_one_logit_row_per_image(name):
    torch.manual_seed(0)
    model = build_model(name, (3, 16, 16), 7, width=0.0625)
    exits = exit_heads(model)
    for depth in range(1, model.num_blocks + 1):
        outputs = ExitModel(model, exits, depth).eval()(torch.randn(2, 3, 16, 16))
        assert [tuple(o.shape) for o in outputs] == [(2, 7)] * depth


def test_distillation_is_zero_when_exits_agree_and_matches_a_hand_computed_kl_otherwise():
    same = torch.tensor([[2.0, 0.0, -1.0]])
    assert float(distillation_loss([same, same.clone(), same.clone()], 1.0)) == pytest.approx(0.0, abs=1e-5)
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # softmax (1/2, 1/2), (3/4, 1/4)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.75, 0.25])
    expected = float((q * (q / p).log()).sum() + (p * (p / q).log()).sum())  # KL(q‖p) + KL(p‖q), n − 1 = 1
    assert float(distillation_loss([a, b], 1.0)) == pytest.approx(expected, rel=1e-4)
    assert float(distillation_loss([a], 1.0)) == 0.0  # one exit: nothing to distil


def test_distillation_targets_are_detached_so_only_the_student_gets_gradients():
    student = torch.tensor([[0.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0]], requires_grad=True)
    distillation_loss([student, teacher.detach()], 2.0).backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


@pytest.mark.parametrize(("exits", "temperature"), [(2, 1.0), (4, 1.0), (3, 2.0)])
def test_the_fused_distillation_gives_the_pairwise_value_and_gradients(exits, temperature):
    generator = torch.Generator().manual_seed(exits)
    logits = [(3 * torch.randn(16, 10, generator=generator)).requires_grad_() for _ in range(exits)]
    values, grads = [], []
    for distillation in (distillation_loss, fused_distillation_loss):
        value = distillation(logits, temperature)
        values.append(value.detach())
        grads.append(torch.autograd.grad(value, logits))
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6)
    assert float(values[0]) > 0.1  # exits that disagree
    for fused, pairwise in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(fused, pairwise, rtol=1e-5, atol=1e-7)
    assert float(fused_distillation_loss(logits[:1], temperature)) == 0.0


def test_consistency_weight_ramps_up_to_one_at_round_301():
    assert consistency_weight(0, 300) == pytest.approx(math.exp(-5.0))
    assert consistency_weight(150, 300) == pytest.approx(math.exp(-1.25))
    assert consistency_weight(300, 300) == 1.0 and consistency_weight(0, 0) == 1.0


def test_feddyn_client_state_moves_against_the_local_drift():
    g = {"w": torch.tensor([1.0, 0.0])}
    new = feddyn_client_state(g, {"w": torch.tensor([3.0, -1.0])}, {"w": torch.tensor([1.0, 1.0])}, alpha=0.1)
    assert torch.allclose(new["w"], torch.tensor([1.0 - 0.2, 0.0 + 0.2]))


def test_each_tensor_is_averaged_only_over_the_clients_that_trained_it():
    old = {"block1": torch.tensor([0.0, 0.0]), "block2": torch.tensor([10.0]), "head": torch.tensor([5.0])}
    shallow = {"block1": torch.tensor([2.0, 4.0])}
    deep = {"block1": torch.tensor([4.0, 8.0]), "block2": torch.tensor([1.0])}
    new = holder_average(old, [shallow, deep], ["block1", "block2", "head"], None, 0.1, 10)
    assert torch.equal(new["block1"], torch.tensor([3.0, 6.0]))  # both clients
    assert torch.equal(new["block2"], torch.tensor([1.0]))  # only the deep client
    assert torch.equal(new["head"], torch.tensor([5.0]))  # nobody: unchanged


def test_feddyn_server_correction_uses_the_holder_count_and_keeps_h_across_rounds():
    old = {"w": torch.tensor([0.0]), "v": torch.tensor([1.0])}
    h: dict[str, torch.Tensor] = {}
    new = holder_average(old, [{"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}], ["w", "v"], h, 0.1, 10)
    # θ̄ = 3, h = −0.1·(2/10)·3 = −0.06, θ = 3 − h/0.1 = 3.6; v held by nobody keeps its value and h.
    assert float(h["w"]) == pytest.approx(-0.06) and "v" not in h
    assert float(new["w"]) == pytest.approx(3.6) and float(new["v"]) == 1.0
    holder_average(new, [{"w": torch.tensor([3.6])}], ["w"], h, 0.1, 10)
    assert float(h["w"]) == pytest.approx(-0.06)  # no drift, no change


def test_a_device_whose_budget_lies_between_depth_two_and_three_gets_depth_two():
    peaks = {1: 100, 2: 200, 3: 300, 4: 400}
    assert deepest_fitting_depth(peaks, 250) == 2
    assert deepest_fitting_depth(peaks, 400) == 4
    assert deepest_fitting_depth(peaks, 99) is None
    assert deepest_fitting_depth(peaks, None) == 4  # unlimited


def test_depthfl_gives_each_device_its_deepest_fitting_depth_from_the_memory_model():
    ctx, _ = engine.prepare(config_with("depthfl", fleet={"profile": "uniform-mb", "low_mb": 1, "high_mb": 9}))
    method = DepthFL(ctx, DepthFLOptions())
    peaks = {d: ctx.memory_report(method._locals[d], None, method.memory_loss).peak_bytes for d in method.depths}
    for device in ctx.fleet.devices:
        fits = [d for d in method.depths if peaks[d] <= device.memory_bytes]
        assert method.depth_of.get(device.device_id) == (max(fits) if fits else None)
    for assignment in method.assign(0):
        assert assignment.work == method.depth_of[assignment.client_id]


def test_depthfl_workloads_are_one_per_offered_depth_with_feddyn_state_and_distillation_loss():
    model = build_model("resnet18", (3, 16, 16), 10, width=0.0625)
    workloads = DepthFL.workloads(model, DepthFLOptions())
    assert [w.name for w in workloads] == ["depth1", "depth2", "depth3", "depth4"]
    deepest = workloads[-1]
    assert deepest.loss_fn.kd_weight == 1.0 and deepest.loss_fn.alpha == 0.1
    own = sum(p.numel() for p in deepest.model.net.parameters())
    assert sum(b.numel() for b in deepest.model.feddyn.buffers()) == 2 * own  # g_m and θ^t live on the device
    assert [w.name for w in DepthFL.workloads(model, DepthFLOptions(exits=(2,)))] == ["depth2", "depth4"]


def test_without_feddyn_in_memory_a_budget_holds_the_exit_models_step_alone_and_reaches_deeper():
    """A budget between depth 4's step with and without FedDyn's g_m and θ^t: depth 3 by default
    (the state sits on the device), depth 4 with ``feddyn_in_memory=false`` (spec §8.3's rule);
    training keeps FedDyn either way."""
    model = build_model("resnet18", (3, 16, 16), 10, width=0.0625)
    ctx, _ = engine.prepare(config_with("depthfl", model={"name": "resnet18", "width": 0.0625}))

    def peaks(options: DepthFLOptions) -> list[int]:
        return [ctx.memory_report(w.model, None, w.loss_fn).peak_bytes for w in DepthFL.workloads(model, options)]

    bare = DepthFLOptions(feddyn_in_memory=False)
    with_state, without = peaks(DepthFLOptions()), peaks(bare)
    assert all(b < s for b, s in zip(without, with_state, strict=True)) and with_state[2] < without[3]
    assert all(w.loss_fn.alpha == 0 and w.model.feddyn is None for w in DepthFL.workloads(model, bare))
    budget = (without[3] + with_state[3]) // 2
    ctx.fleet = Fleet("test", tuple(Device(i, budget, 1e9, 1e6, "test") for i in range(ctx.num_clients)))
    assert set(DepthFL(ctx, DepthFLOptions()).depth_of.values()) == {3}
    spec_rule = DepthFL(ctx, bare)
    assert set(spec_rule.depth_of.values()) == {4}
    assert spec_rule._locals[4].feddyn is not None and spec_rule.memory_loss.alpha == 0.1


# ------------------------------------------------------------------------ ProgFed
def test_progfed_schedule_grows_at_multiples_of_the_update_cycle():
    assert default_update_cycle(30, 4) == 5  # ⌊30 / (2·3)⌋: full size at mid-training
    assert stage_schedule(30, 4, 5) == [1] * 5 + [2] * 5 + [3] * 5 + [4] * 15
    assert stage_schedule(4, 2, default_update_cycle(4, 2)) == [1, 1, 2, 2]
    assert default_update_cycle(2, 4) == 1


def test_progfed_scores_its_current_sub_model_every_eval_every_rounds_while_it_grows():
    config = config_with("progfed", rounds=12, eval_every=3)  # cnn: stage 1 in rounds 1-6, grown from 7
    method = engine.make_method(engine.prepare(config)[0])
    assert [method.work_of(r).stage for r in range(12)] == [1] * 6 + [2] * 6
    # spec §11.2: the current sub-model with its current head is scored on the shared grid, mid-stage too
    assert sorted(engine.evaluation_rounds(method)) == [2, 5, 8, 11]
    assert method.eval_model() is method.stages[1]


def test_a_grown_progfed_model_keeps_the_weights_trained_in_the_earlier_stage():
    config = config_with("progfed", rounds=2)
    ctx, _ = engine.prepare(config)
    method = engine.make_method(ctx)
    assert method.update_cycle == 1
    initial = {k: v.clone() for k, v in method.stages[1].blocks[0].state_dict().items()}
    engine.run_round(method, 0)  # stage 1
    trained = method.stages[1].blocks[0].state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in trained.items())
    grown = method.stages[2]
    assert all(torch.equal(grown.blocks[0].state_dict()[k], v) for k, v in trained.items())
    assert grown.head is method.global_model.head  # the last stage is the model itself
    assert method.work_of(1).stage == 2


def test_progfed_stops_growing_at_the_last_stage_any_device_fits():
    ctx, _ = engine.prepare(config_with("progfed", rounds=4))
    peaks = [ctx.memory_report(m).peak_bytes for m in ProgFed(ctx).stages.values()]
    assert peaks[0] < peaks[1]
    ctx.fleet = Fleet("test", tuple(Device(i, peaks[0], 1e9, 1e6, "test") for i in range(ctx.num_clients)))
    method = ProgFed(ctx)
    assert method.last_stage == 1 and [method.work_of(r).stage for r in range(4)] == [1, 1, 1, 1]
    assert method.round_metrics(0, [])["progfed/incomplete"] == 1.0


def test_the_ensemble_averages_only_the_exits_some_device_can_train(caplog):
    """Depth 4 fits nobody: exit 4 stays at its initialisation, so the prediction is the mean of
    exits 1-3 and exit 4 has no accuracy; ``ensemble: all`` averages all four, as the official code."""
    ctx, _ = engine.prepare(config_with("depthfl", model={"name": "resnet18", "width": 0.0625}))
    workloads = DepthFL.workloads(build_model("resnet18", (3, 16, 16), 10, width=0.0625), DepthFLOptions())
    peaks = [ctx.memory_report(w.model, None, w.loss_fn).peak_bytes for w in workloads]
    assert peaks[2] < peaks[3]
    ctx.fleet = Fleet("test", tuple(Device(i, peaks[2], 1e9, 1e6, "test") for i in range(ctx.num_clients)))
    with caplog.at_level(logging.INFO, logger="fedbench.methods.depthfl"):
        method = DepthFL(ctx, DepthFLOptions())
    assert set(method.depth_of.values()) == {3}
    assert method.trained_exits == method.ensemble_exits == (1, 2, 3)
    assert "exits at blocks 1, 2, 3 (no eligible device's depth reaches block 4)" in caplog.text

    method.full.eval()
    correct, count = 0, 0
    with torch.no_grad():
        for images, labels in ctx.data.dataset.test_batches(300):
            exits = method.full(images)
            mean_of_three = torch.stack(exits[:3]).mean(dim=0)
            assert torch.allclose(method.eval_model()(images), mean_of_three)
            assert not torch.allclose(torch.stack(exits).mean(dim=0), mean_of_three)
            correct += int((mean_of_three.argmax(dim=1) == labels).sum())
            count += int(labels.numel())
    metrics = method.evaluate(300)
    assert metrics["eval/accuracy"] == metrics["eval/ensemble/accuracy"] == correct / count
    assert metrics["eval/ensemble_exits"] == 3.0
    assert {f"eval/exit{k}/accuracy" for k in (1, 2, 3)} <= set(metrics) and "eval/exit4/accuracy" not in metrics

    every = DepthFL(ctx, DepthFLOptions(ensemble="all"))
    assert every.ensemble_exits == (1, 2, 3, 4) and every.trained_exits == (1, 2, 3)
    every.full.eval()
    with torch.no_grad():
        images = next(iter(ctx.data.dataset.test_batches(300)))[0]
        assert torch.allclose(every.eval_model()(images), torch.stack(every.full(images)).mean(dim=0))
    assert every.evaluate(300)["eval/ensemble_exits"] == 4.0


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(("options", "message"), [
    ({"temperature": -1.0}, r"options.temperature \(-1.0\) must be > 0"),
    ({"alpha": -0.1}, r"options.alpha \(-0.1\) must be >= 0"),
    ({"exits": [0, 2]}, r"exit index 0 is out of range for model 'cnn': use 1..2"),
    ({"exits": [5]}, r"exit index 5 is out of range"),
    ({"ensemble": "every"}, r"options.ensemble \('every'\) must be one of trained, all"),
])
def test_bad_depthfl_options_are_one_line_errors(options, message):
    ctx, _ = engine.prepare(config_with("depthfl", options=options))
    with pytest.raises(ConfigError, match=message) as info:
        engine.make_method(ctx)
    assert "\n" not in str(info.value)


def test_progfed_rejects_a_zero_update_cycle():
    with pytest.raises(ConfigError, match=r"options.update_cycle \(0\) must be >= 1"):
        ProgFed.parse_options({"update_cycle": 0})


@pytest.mark.parametrize("method", ["depthfl", "progfed"])
def test_a_fleet_that_fits_no_shallowest_submodel_is_one_line_with_needed_and_available_bytes(method):
    config = config_with(method, model={"name": "cnn", "width": 1.0},
                         fleet={"profile": "uniform-mb", "low_mb": 1, "high_mb": 1})
    ctx, _ = engine.prepare(config)
    with pytest.raises(MemoryBudgetError, match=r"no device can train \w+ (depth|stage) 1 of cnn \(needs .* MiB at "
                                                r"batch 32; largest budget 1.0 MiB\)") as info:
        engine.make_method(ctx)
    assert "largest budget 1.0 MiB" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", ["depthfl", "progfed"])
def test_two_rounds_on_synthetic_are_deterministic_with_finite_loss(method):
    config = config_with(method, fleet={"profile": "relative"})
    first, second = engine.run(config), engine.run(config)
    assert without_timings(first) == without_timings(second)
    check_run(method, first, {"name": "cnn", "width": 0.25})


@pytest.mark.parametrize("method", ["depthfl", "progfed"])
def test_two_rounds_of_resnet18_on_synthetic_train_every_depth_with_finite_loss(method):
    model = {"name": "resnet18", "width": 0.0625}
    config = config_with(method, model=model, clients_per_round=1, eval_every=2)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_clients=12))
    check_run(method, engine.run(config), model)


def check_run(method: str, result, model: dict) -> None:
    first = result
    last = first.rounds[-1].metrics
    assert all(math.isfinite(r.metrics["train/loss"]) for r in first.rounds)
    assert 0.0 <= last["eval/accuracy"] <= 1.0 and 0.0 < last["participation/rate"] <= 1.0
    if method == "depthfl":
        blocks = build_model(model["name"], (3, 16, 16), 10, model["width"]).num_blocks
        assert last["eval/accuracy"] == last["eval/ensemble/accuracy"]
        trained = int(last["eval/ensemble_exits"])  # the exits some device's depth reaches
        assert {f"eval/exit{k}/accuracy" for k in range(1, trained + 1)} <= set(last)
        assert not {f"eval/exit{k}/accuracy" for k in range(trained + 1, blocks + 1)} & set(last)
        assert sum(last[f"work/depth_{d}"] for d in range(1, blocks + 1)) == last["round/clients"]
    else:
        assert last["work/stage"] >= 1.0


def without_timings(result) -> list[dict[str, float]]:
    return [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in result.rounds]


def test_both_methods_are_registered_methods():
    for name, cls in (("depthfl", DepthFL), ("progfed", ProgFed)):
        assert registry.load("methods", name) is cls and issubclass(cls, Method)


def test_fedbench_memory_shows_the_depths_a_budget_must_hold_with_and_without_feddyn_state():
    from typer.testing import CliRunner

    from fedbench.cli.main import app

    def peaks(*extra: str) -> dict[str, int]:
        result = CliRunner().invoke(app, ["memory", "--method", "depthfl", "--model", "resnet18", "--width", "0.0625",
                                          "--dataset", "synthetic", "--json", *extra])
        assert result.exit_code == 0, result.output
        return {r["submodel"]: r["peak_bytes"] for r in json.loads(result.output)["rows"]}

    with_state, without = peaks(), peaks("--opt", "feddyn_in_memory=false")
    assert all(without[f"depth{d}"] < with_state[f"depth{d}"] for d in range(1, 5))
    assert without["full"] == with_state["full"]
