"""NeuLite: stage schedule, trainable sets, memory, nHSIC, curriculum loss, switches, bad input."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest
import torch
import torch.nn.functional as F

from fedbench import engine
from fedbench.config import make_config
from fedbench.core.evaluation import evaluate
from fedbench.core.method import ClientContext
from fedbench.errors import ConfigError, MemoryBudgetError
from fedbench.kits.hsic import balanced_probe, block_information_plane, nhsic
from fedbench.memory.model import MemoryModel
from fedbench.methods.neulite import CurriculumLoss, NeuLite, NeuLiteOptions
from fedbench.models import build_model
from fedbench.models.cutting import coadaptation_scope

SHAPE = (3, 16, 16)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny models run faster so on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def config(rounds: int = 2, model: str = "resnet18", width: float = 0.125, fleet: dict | None = None, **options):
    """Synthetic 3×16×16 data, 30 clients of 40 samples, 2 per round."""
    return make_config(overrides={
        "method": "neulite",
        "options": options,
        "data": {"dataset": "synthetic", "num_clients": 30, "partition": "iid"},
        "train": {"local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "model": {"name": model, "width": width},
        "fleet": fleet or {"profile": "homogeneous"},
        "clients_per_round": 2,
        "rounds": rounds,
        "threads": 1,
        "tracking": {"enabled": False},
    })


def method_for(cfg) -> NeuLite:
    ctx, _ = engine.prepare(cfg)
    return engine.make_method(ctx)


def train_round(method: NeuLite, round_idx: int) -> None:
    """assign → local updates → aggregate, without the engine's metrics, clock and evaluation."""
    updates = [method.local_update(ClientContext.of(method.ctx, a, round_idx)) for a in method.assign(round_idx)]
    method.aggregate(round_idx, updates)


def resnet18(width: float = 0.125, shape=SHAPE):
    return build_model("resnet18", shape, 10, width=width)


# ------------------------------------------------------------------ schedule
def test_round_t_trains_stage_t_minus_one_mod_s_plus_one():
    method = method_for(config(rounds=9))
    assert [method.stage_of(r) for r in range(9)] == [1, 2, 3, 4, 1, 2, 3, 4, 1]


def test_a_round_count_that_ends_mid_cycle_is_warned_about_with_the_nearest_full_cycles(caplog):
    with caplog.at_level(logging.WARNING, logger="fedbench.methods.neulite"):
        method_for(config(rounds=9))
    assert "9 rounds is not a multiple of the 4 stages" in caplog.text
    assert "use --rounds 8 or 12" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedbench.methods.neulite"):
        method_for(config(rounds=8))
    assert "not a multiple" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="fedbench.methods.neulite"):
        method_for(config(rounds=2))
    assert "use --rounds 4" in caplog.text and "--rounds 0" not in caplog.text


def test_without_round_robin_each_stage_runs_r_over_s_consecutive_rounds():
    method = method_for(config(rounds=8, round_robin=False))
    assert [method.stage_of(r) for r in range(8)] == [1, 1, 2, 2, 3, 3, 4, 4]


# ------------------------------------------------------------ trainable sets
def test_resnet18_stage_k_trains_block_k_its_output_module_and_conv2_bn2_of_the_previous_last_unit():
    model = resnet18(width=1.0, shape=(3, 32, 32))
    stages = NeuLite.workloads(model, NeuLiteOptions())
    all_names = {name for name, _ in stages[0].model.named_parameters()}
    assert stages[0].trainable == frozenset(all_names)
    expected_extra = {2: 36_992, 3: 147_712, 4: 590_336}  # spec §2.5
    for k in (2, 3, 4):
        stage = stages[k - 1]
        params = dict(stage.model.named_parameters())
        own = {n for n in params if n.startswith((f"blocks.{k - 1}.", "standins.", "head.", "mlp."))}
        extra = stage.trainable - own
        assert own <= stage.trainable
        assert extra == {f"blocks.{k - 2}.unit2.conv2.weight", f"blocks.{k - 2}.unit2.bn2.weight",
                         f"blocks.{k - 2}.unit2.bn2.bias"}
        assert sum(params[n].numel() for n in extra) == expected_extra[k]


def test_co_adaptation_false_leaves_the_previous_block_frozen():
    model = resnet18()
    with_co = NeuLite.workloads(model, NeuLiteOptions())
    without = NeuLite.workloads(model, NeuLiteOptions(co_adaptation=False))
    for k in (2, 3, 4):
        scope = set(coadaptation_scope(model, k))
        assert scope <= with_co[k - 1].trainable
        assert not scope & without[k - 1].trainable
        assert with_co[k - 1].trainable - without[k - 1].trainable == scope


def test_curriculum_loss_false_drops_the_projection_mlp_and_trains_on_cross_entropy():
    stages = NeuLite.workloads(resnet18(), NeuLiteOptions(curriculum_loss=False))
    assert all(s.loss_fn is None and s.model.mlp is None for s in stages)
    assert not any(n.startswith("mlp.") for s in stages for n in s.trainable)
    method = method_for(config(rounds=1, model="cnn", curriculum_loss=False))
    metrics = engine.run_round(method, 0).metrics
    assert "neulite/ce" not in metrics and math.isfinite(metrics["train/loss"])


def test_only_the_stage_trainable_set_gets_gradients_and_frozen_parameters_do_not_change():
    method = method_for(config(rounds=4))
    stage2 = method.stages[1]
    before = {n: p.detach().clone() for n, p in method.global_model.named_parameters()}
    others = {(s.name, n): p.detach().clone() for s in method.stages for n, p in s.model.named_parameters()
              if n.startswith(("standins.", "mlp.")) and s is not stage2}
    buffers_before = method.global_model.stem.bn.running_mean.clone()
    train_round(method, 1)  # stage 2
    worker = method._workers[2]
    for name, param in worker.named_parameters():
        assert (param.grad is not None) == (name in stage2.trainable), name
    model_trainable = {n for n in stage2.trainable if n.startswith("blocks.")}  # O_2 is not the model's head
    for name, param in method.global_model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == (name in model_trainable), name
    for s in method.stages:  # other stages' stand-ins and MLPs are untouched
        for name, param in s.model.named_parameters():
            if (s.name, name) in others:
                assert torch.equal(param, others[s.name, name])
    # frozen BN layers still train their statistics, as in the released code (spec §2.5)
    assert not torch.equal(method.global_model.stem.bn.running_mean, buffers_before)


def test_freeze_bn_stats_keeps_frozen_batchnorm_statistics():
    method = method_for(config(rounds=4, freeze_bn_stats=True))
    before = method.global_model.stem.bn.running_mean.clone()
    train_round(method, 1)
    assert torch.equal(method.global_model.stem.bn.running_mean, before)


def test_replicate_stem_artifact_restores_the_stem_statistics_of_the_last_stage_one_round():
    method = method_for(config(rounds=5, replicate_stem_artifact=True))
    train_round(method, 0)
    after_stage1 = method.global_model.stem.bn.running_mean.clone()
    train_round(method, 1)  # stage 2 trains the stem's BN statistics in train mode
    assert not torch.equal(method.global_model.stem.bn.running_mean, after_stage1)
    method.assign(4)  # the next stage-1 round
    assert torch.equal(method.global_model.stem.bn.running_mean, after_stage1)


def test_fc_only_output_modules_classify_block_k_without_stand_ins():
    model = resnet18()
    stages = NeuLite.workloads(model, NeuLiteOptions(output_module="fc_only"))
    channels = [shape[0] for shape in model.block_output_shapes()]
    images, labels = torch.randn(4, *SHAPE), torch.arange(4)
    for k, stage in enumerate(stages, start=1):
        assert len(stage.model.standins) == 0
        assert stage.model.mlp[0].in_features == channels[k - 1]
        assert math.isfinite(float(stage.loss_fn(stage.model, images, labels).detach()))


def test_fedbench_memory_lists_one_row_per_neulite_stage_and_the_full_model():
    from fedbench.reports.memory_table import memory_rows

    rows = memory_rows("resnet18", "synthetic", 32, "neulite", "uniform-mb", width=0.125)
    assert [r["submodel"] for r in rows] == ["stage1", "stage2", "stage3", "stage4", "full"]
    assert all(r["peak_bytes"] > 0 and r["pr"] == 1.0 for r in rows)
    assert max(r["peak_bytes"] for r in rows[:4]) < rows[4]["peak_bytes"]


@pytest.mark.parametrize("arch", ["cnn", "resnet18", "resnet34", "vgg11_bn", "squeezenet", "vit"])
def test_every_stage_of_every_model_has_a_finite_curriculum_loss_and_a_frozen_prefix(arch):
    model = build_model(arch, SHAPE, 10, width=0.125)
    images, labels = torch.randn(4, *SHAPE), torch.arange(4)
    for k, stage in enumerate(NeuLite.workloads(model, NeuLiteOptions()), start=1):
        names = {name for name, _ in stage.model.named_parameters()}
        assert stage.trainable <= names and (k > 1 or stage.trainable == names)
        frozen_prefix = ("stem.", *(f"blocks.{b}." for b in range(k - 2)))  # stem, blocks 1..k−2
        assert k == 1 or not any(n.startswith(frozen_prefix) for n in stage.trainable)
        loss = stage.loss_fn(stage.model, images, labels)
        assert math.isfinite(float(loss.detach()))


# -------------------------------------------------------------------- memory
def test_every_resnet18_stage_needs_less_memory_than_the_full_model():
    model, memory = resnet18(), MemoryModel()
    full = memory.report(model, batch_size=64, input_shape=SHAPE).peak_bytes
    peaks = [memory.report(s.model, s.trainable, 64, SHAPE, s.loss_fn) for s in NeuLite.workloads(model, NeuLiteOptions())]
    assert max(p.peak_bytes for p in peaks) < full


def test_frozen_parameters_cost_no_gradient_or_optimizer_memory():
    method = method_for(config(rounds=1))
    stage = method.stages[3]
    report = method.ctx.memory_report(stage.model, stage.trainable, stage.loss_fn)
    params = dict(stage.model.named_parameters())
    trainable_bytes = sum(params[n].numel() * 4 for n in stage.trainable)
    assert report.optimizer_bytes == trainable_bytes
    assert report.trainable_params == sum(params[n].numel() for n in stage.trainable)


# --------------------------------------------------------------------- nHSIC
def test_nhsic_matches_the_kernel_formula_computed_by_hand():
    a = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)

    def kernel(x):
        d = x.shape[1]
        return torch.tensor([[math.exp(-float(((xi - xj) ** 2).sum()) / (2 * 25 * d)) for xj in x] for xi in x],
                            dtype=torch.float64)

    h = torch.eye(3, dtype=torch.float64) - 1 / 3

    def hsic(ka, kb):
        return float(torch.trace(ka @ h @ kb @ h)) / 9

    ka, kb = kernel(a), kernel(b)
    expected = hsic(ka, kb) / math.sqrt(hsic(ka, ka) * hsic(kb, kb))
    value, valid = nhsic(a, b)
    assert bool(valid) and float(value) == pytest.approx(expected, rel=1e-9)
    assert float(nhsic(b, a).value) == pytest.approx(expected, rel=1e-9)


def test_nhsic_is_one_for_identical_inputs_and_near_zero_for_independent_ones():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 20, generator=g)
    assert float(nhsic(a, a).value) == pytest.approx(1.0, abs=1e-5)
    independent = float(nhsic(a, torch.randn(1024, 12, generator=g)).value)
    dependent = float(nhsic(a, a[:, :12] + 0.1 * torch.randn(1024, 12, generator=g)).value)
    assert independent < 0.05 < 0.5 < dependent


def test_nhsic_of_a_degenerate_batch_is_invalid_and_has_a_zero_gradient():
    one = torch.randn(1, 5, requires_grad=True)
    assert not bool(nhsic(one, torch.randn(1, 3)).valid)
    same = torch.ones(4, 5, requires_grad=True)
    value, valid = nhsic(same, torch.randn(4, 3))
    assert not bool(valid) and float(value.detach()) == 0.0
    value.backward()
    assert torch.equal(same.grad, torch.zeros_like(same))


def test_curriculum_loss_with_zero_lambdas_equals_cross_entropy():
    stage = NeuLite.workloads(resnet18(), NeuLiteOptions())[1].model
    images, labels = torch.randn(8, *SHAPE), torch.arange(8) % 10
    torch.manual_seed(0)
    expected = F.cross_entropy(stage(images), labels)
    assert torch.equal(CurriculumLoss(0.0, 0.0, 10)(stage, images, labels), expected)
    terms = CurriculumLoss(0.3, 0.2, 10).terms(stage, images, labels)
    assert bool(terms.used)
    expected = terms.ce - 0.3 * terms.nhsic_zx - 0.2 * terms.nhsic_py
    assert float(terms.loss.detach()) == pytest.approx(float(expected.detach()))


def test_default_lambdas_follow_the_linear_schedule_of_the_spec():
    lam1, lam2 = NeuLiteOptions().lambdas(4)
    assert lam1 == pytest.approx((0.4, 0.3, 0.2, 0.1)) and lam2 == pytest.approx((0.1, 0.2, 0.3, 0.4))
    lam1, lam2 = NeuLiteOptions().lambdas(3)
    assert lam1 == pytest.approx((0.4, 0.8 / 3, 0.4 / 3)) and lam2 == pytest.approx((0.4 / 3, 0.8 / 3, 0.4))
    assert NeuLite.parse_options({"lambda1": [0.5, 0, 0, 0]}).lambda1 == (0.5, 0.0, 0.0, 0.0)


def test_information_plane_gives_one_pair_of_values_per_block(synthetic_data):
    images, labels = balanced_probe(synthetic_data, 3)
    assert images.shape[0] == 30 and torch.equal(torch.bincount(labels), torch.full((10,), 3))
    metrics = block_information_plane(resnet18(), images, labels, 10)
    assert sorted(metrics) == sorted(f"nhsic/{t}/block{b}" for t in ("xz", "yz") for b in range(1, 5))
    assert all(0.0 <= v <= 1.0 + 1e-6 for v in metrics.values())


# ------------------------------------------------------------------ end to end
def test_two_rounds_run_end_to_end_with_finite_loss_and_the_same_result_for_the_same_seed():
    def run():
        result = engine.run(dataclasses.replace(config(rounds=2, model="cnn", width=0.25), info_plane=2))
        return [{k: v for k, v in r.metrics.items() if not k.startswith("time/")} for r in result.rounds]

    first, second = run(), run()
    assert first == second
    assert [r["neulite/stage"] for r in first] == [1.0, 2.0]
    assert all(math.isfinite(r["train/loss"]) for r in first)
    assert "eval/accuracy" not in first[0]  # a stage-1 round: the model is not complete (spec §2.9)
    assert {"nhsic/xz/block2", "nhsic/yz/block1", "eval/accuracy"} <= set(first[1])
    assert first[-1]["participation/rate"] == 1.0


def test_by_default_every_evaluation_follows_a_stage_s_round_and_the_last_round_is_one():
    def rounds_evaluated(eval_every: int) -> list[int]:
        cfg = dataclasses.replace(config(rounds=8, model="cnn", width=0.25), eval_every=eval_every)
        return sorted(engine.evaluation_rounds(method_for(cfg)))  # cnn: 2 stages, cycles end at 1, 3, 5, 7

    assert rounds_evaluated(1) == [1, 3, 5, 7]  # after every stage-S round
    assert rounds_evaluated(2) == [1, 3, 5, 7]  # eval_every counts rounds, as for every other method
    assert rounds_evaluated(3) == [3, 5, 7]  # rounds 3 and 6 (1-based); round 3 moves on to the cycle end 4
    assert rounds_evaluated(4) == [3, 7]


def test_with_eval_every_a_multiple_of_s_neulite_is_evaluated_on_the_same_rounds_as_fedavg():
    cfg = dataclasses.replace(config(rounds=12, model="cnn", width=0.25), eval_every=4)
    fedavg = method_for(dataclasses.replace(cfg, method="fedavg"))
    assert engine.evaluation_rounds(method_for(cfg)) == engine.evaluation_rounds(fedavg) == {3, 7, 11}


def test_every_evaluation_says_whether_it_ends_a_cycle_so_reports_can_leave_out_the_last_round():
    result = engine.run(config(rounds=3, model="cnn", width=0.25))  # 2 stages: round 3 is a stage-1 round
    ends = [r.metrics.get("eval/cycle_end") for r in result.rounds]
    assert ends == [None, 1.0, 0.0]
    staged = engine.run(config(rounds=3, model="cnn", width=0.25, evaluate="stage"))
    assert [r.metrics.get("eval/cycle_end") for r in staged.rounds] == [1.0, 1.0, 1.0]


def test_evaluate_stage_scores_the_just_trained_stage_model_every_round():
    result = engine.run(config(rounds=2, model="cnn", width=0.25, evaluate="stage"))
    first, second = (r.metrics for r in result.rounds)
    assert first["eval/accuracy"] == first["eval/stage1/accuracy"] and "eval/stage2/accuracy" not in first
    assert second["eval/accuracy"] == second["eval/stage2/accuracy"] and "eval/stage1/accuracy" not in second


def test_a_cycle_evaluation_scores_the_full_model_and_every_stage_model_in_one_pass():
    method = method_for(config(rounds=4, model="resnet18", width=0.125))  # 4 stages: one cycle
    rounds = engine.run_rounds(method)
    assert [sorted(k for k in r.metrics if k.startswith("eval/stage")) for r in rounds[:3]] == [[], [], []]
    logged = rounds[-1].metrics
    dataset, device = method.ctx.data.dataset, method.ctx.config.device
    full = evaluate(method.global_model, dataset, 64, device)
    assert (logged["eval/accuracy"], logged["eval/loss"]) == pytest.approx((full["accuracy"], full["loss"]))
    for k, work in enumerate(method.stages, start=1):  # each S_k scored on its own agrees
        assert logged[f"eval/stage{k}/accuracy"] == pytest.approx(evaluate(work.model, dataset, 64, device)["accuracy"])
    assert logged["eval/stage4/accuracy"] == logged["eval/accuracy"]
    assert len({logged[f"eval/stage{k}/accuracy"] for k in range(1, 5)}) > 1  # four models, not one scored four times


# ----------------------------------------------------------------- bad input
def test_a_stage_no_device_can_train_is_skipped_with_a_warning_and_counted_and_pr_is_0(caplog):
    # cnn, width 1, batch 32, 16×16: stage 1 needs 2.6 MiB, stage 2 (full model + MLP) 3.4 MiB
    fleet = {"profile": "uniform-mb", "low_mb": 3, "high_mb": 3}
    cfg = config(rounds=4, model="cnn", width=1.0, fleet=fleet)
    with caplog.at_level(logging.WARNING, logger="fedbench.methods.neulite"):
        method = method_for(cfg)
        rounds = engine.run_rounds(method)
    assert [len(ids) > 0 for ids in method.eligible_ids] == [True, False]
    assert [r.metrics["round/clients"] for r in rounds] == [2.0, 0.0, 2.0, 0.0]
    assert rounds[-1].metrics["neulite/skipped_rounds"] == 2.0
    assert [r.metrics.get("neulite/stage2_skipped") for r in rounds] == [None, 1.0, 1.0, 2.0]
    assert not any("neulite/stage1_skipped" in r.metrics for r in rounds)
    # Stage 1 fits every device, yet block 2 is trained by none: not runnable, so PR 0 ("NA"), and the
    # run's model and accuracy are still logged (spec common.md §1.1 and Q19).
    assert [r.metrics["participation/rate"] for r in rounds] == [0.0] * 4
    assert method.ctx.not_runnable == "NeuLite stage(s) 2 fit no device (need 3.4 MiB)"
    assert "stage(s) 2 fit no device (need 3.4 MiB): their rounds will be skipped and the run's PR is 0" in caplog.text
    assert "round 2: NeuLite stage 2 fits no device; round skipped" in caplog.text


def test_a_model_no_stage_of_which_fits_any_device_fails_before_round_one_in_one_line():
    cfg = config(rounds=1, model="cnn", width=1.0, fleet={"profile": "uniform-mb", "low_mb": 1, "high_mb": 1})
    with pytest.raises(MemoryBudgetError, match=r"no device can train any NeuLite stage of cnn") as err:
        method_for(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("options, message", [
    ({"lambda1": [0.1, -0.2, 0.1, 0.1]}, r"options.lambda1 .* negative weight"),
    ({"lambda_max": -1}, r"options.lambda_max \(-1.0\) must be >= 0"),
    ({"output_module": "mlp"}, r"options.output_module \('mlp'\) must be one of stand_in, fc_only"),
    ({"co_adapt": False}, r"unknown config key 'co_adapt'"),
])
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        NeuLite.parse_options(options)
    assert "\n" not in str(err.value)


def test_lambdas_must_give_one_weight_per_stage():
    with pytest.raises(ConfigError, match=r"options.lambda2 has 2 values but the model has 4 stages"):
        NeuLite.workloads(resnet18(), NeuLite.parse_options({"lambda2": [0.1, 0.2]}))


def test_a_model_without_block_structure_is_a_one_line_error():
    model = build_model("cnn", SHAPE, 10, width=0.25)
    model.cut = None
    with pytest.raises(ConfigError, match=r"model 'cnn' declares no CutSpec"):
        NeuLite.workloads(model, NeuLiteOptions())
