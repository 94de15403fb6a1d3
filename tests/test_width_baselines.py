"""AllSmall, HeteroFL and FedRolex: widths from the memory model, sliced training, overlap-count
averaging, the rolling window, static BN, and their bad-input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fedbench import engine
from fedbench.cli.main import app
from fedbench.config import make_config
from fedbench.data import ImageDataset
from fedbench.errors import ConfigError, MemoryBudgetError
from fedbench.kits.bn import recompute_bn_statistics, sbn_indices
from fedbench.kits.widths import largest_fitting, level_model
from fedbench.models.base import BlockModel, PoolHead
from fedbench.training.aggregate import overlap_count_average

METHODS = ("allsmall", "heterofl", "fedrolex")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config_with(method: str, fleet: dict | None = None, options: dict | None = None, **extra):
    values = {
        "method": method,
        "data": {"dataset": "synthetic", "num_clients": 10, "partition": "iid"},
        "train": {"local_epochs": 1, "batch_size": 64, "lr": 0.05},  # the relative fleet's reference batch
        "model": {"name": "cnn", "width": 0.25},
        "fleet": fleet or {"profile": "relative"},
        "options": options or {},
        "clients_per_round": 4,
        "rounds": 2,
        "tracking": {"enabled": False},
        "threads": 1,
    }
    values.update(extra)
    return make_config(overrides=values)


def prepared(config):
    ctx, _ = engine.prepare(config)
    return engine.make_method(ctx)


def peak(method, level: float) -> int:
    full = method.ctx.build_model()  # the run's full model (the global model may be narrower)
    workload = next(w for w in type(method).workloads(full, method.options) if w.name.endswith(_fraction(level)))
    return method.ctx.memory_report(workload.model, None, workload.loss_fn).peak_bytes


def _fraction(level: float) -> str:
    from fedbench.kits.widths import level_fraction

    return f"width {level_fraction(level)}"


# ------------------------------------------------------------------ aggregation
def test_two_overlapping_clients_average_to_the_hand_computed_overlap_count_mean():
    old = {"w": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), "n": torch.tensor(5)}
    # client A holds rows {0, 1} × cols {0, 1}; client B rows {1, 2} × cols {1, 2}
    a = {"w": torch.tensor([[2.0, 4.0], [6.0, 8.0]]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}  # B did not hold "n"
    pos_a = {"w": (torch.tensor([0, 1]), torch.tensor([0, 1])), "n": ()}
    pos_b = {"w": (torch.tensor([1, 2]), torch.tensor([1, 2]))}
    new = overlap_count_average(old, [a, b], [pos_a, pos_b])
    expected = torch.tensor([
        [2.0, 4.0, 1.0],                       # A only; (0, 2) nobody: keeps 1
        [6.0, (8.0 + 10.0) / 2, 20.0],         # (1, 1) both
        [1.0, 30.0, 40.0],                     # B only; (2, 0) nobody
    ])
    assert torch.equal(new["w"], expected)
    assert int(new["n"]) == 7
    weighted = overlap_count_average(old, [a, b], [pos_a, pos_b], weights=[3.0, 1.0])
    assert weighted["w"][1, 1].item() == pytest.approx((3 * 8.0 + 1 * 10.0) / 4)
    assert weighted["w"][0, 0].item() == 2.0  # one holder: its value whatever its weight


def test_heterofl_averages_a_class_row_only_over_the_clients_that_hold_the_class():
    method = prepared(config_with("heterofl", {"profile": "homogeneous"}))
    head = "head.3.weight"
    assert method._class_keys == ("head.3.weight", "head.3.bias")
    sub = method.client_model(method.assign(0)[0].work)
    sets = method.index_sets(sub)
    states = []
    for value in (1.0, 3.0):
        states.append({k: torch.full_like(p, value) for k, p in sub.named_parameters()})
    method._classes = {0: torch.tensor([0, 1]), 1: torch.tensor([1, 2])}
    from fedbench.core.method import Update

    method.aggregate(0, [Update(c, 10, s, 0.0, 1, None, {"sets": sets}) for c, s in enumerate(states)])
    rows = method.global_model.state_dict()[head][:4, 0]
    assert rows[:3].tolist() == [1.0, 2.0, 3.0]  # class 0 only A, class 1 both, class 2 only B
    assert method.global_model.state_dict()["blocks.0.0.weight"].flatten()[0].item() == 2.0


# ---------------------------------------------------------------------- oracles
def test_heterofl_with_every_device_at_width_one_equals_fedavg():
    options = {"masked_ce": False, "max_grad_norm": None}
    fedavg = prepared(config_with("fedavg", {"profile": "homogeneous"}))
    hetero = prepared(config_with("heterofl", {"profile": "homogeneous"}, options))
    engine.run_rounds(fedavg)
    engine.run_rounds(hetero)
    assert set(hetero.device_levels.values()) == {1.0}
    ours, theirs = dict(hetero.global_model.named_parameters()), dict(fedavg.global_model.named_parameters())
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=1e-6)


def test_fedrolex_window_rolls_one_channel_per_round_and_wraps_around():
    method = prepared(config_with("fedrolex", {"profile": "homogeneous"}, {"levels": [0.5]}))
    sub = method.client_model(method.assign(0)[0].work)
    assert method.global_model.blocks[0][0].out_channels == 8  # cnn conv1 at width 0.25: K = 8, L = 4
    windows = []
    for r in range(8):
        method.aggregations = r
        windows.append(method.index_sets(sub)["conv1"].tolist())
    assert windows[0] == [0, 1, 2, 3] and windows[1] == [1, 2, 3, 4]
    assert windows[6] == [6, 7, 0, 1] and windows[7] == [7, 0, 1, 2]
    method.aggregations = 0
    covered = {space: set() for space in method.index_sets(sub)}
    for r in range(16):  # the widest layer (fc1) has 128 channels; conv2 16: K rounds cover each
        method.aggregations = r
        for space, idx in method.index_sets(sub).items():
            covered[space].update(idx.tolist())
    assert covered["conv1"] == set(range(8)) and covered["conv2"] == set(range(16))
    method.aggregations = 0
    engine.run_rounds(method)
    assert method.aggregations == 2  # r counts the server aggregations


# ------------------------------------------------------------- widths from memory
def test_allsmall_trains_the_widest_level_that_fits_the_smallest_device():
    method = prepared(config_with("allsmall", {"profile": "uniform-mb", "low_mb": 1, "high_mb": 9},
                                  model={"name": "cnn", "width": 1.0}))
    smallest = min(d.memory_bytes for d in method.ctx.fleet.devices)
    expected = max(r for r in (1.0, 0.5, 0.25, 0.125, 0.0625) if peak(method, r) <= smallest)
    assert method.width_level == expected < 1
    assert method.global_model.width == expected
    result = engine.run_rounds(method)
    assert result[-1].metrics["participation/rate"] == 1.0
    assert result[-1].metrics["work/mean_width"] == expected


def test_allsmall_continuous_grid_finds_the_largest_multiple_of_one_sixty_fourth():
    assert largest_fitting(lambda w: w <= 0.3) == 19 / 64
    assert largest_fitting(lambda w: True) == 1.0
    assert largest_fitting(lambda w: False) is None


def test_heterofl_gives_each_device_the_widest_level_its_budget_holds():
    method = prepared(config_with("heterofl", model={"name": "cnn", "width": 1.0}))
    peaks = {r: peak(method, r) for r in method.options.levels}
    for device in method.ctx.fleet.devices:
        fitting = [r for r, need in peaks.items() if need <= device.memory_bytes]
        assert method.device_levels.get(device.device_id) == (max(fitting) if fitting else None)
    assert len(set(method.device_levels.values())) > 1  # the relative fleet spreads the levels


@pytest.mark.parametrize("method_name", METHODS)
def test_two_rounds_are_deterministic_log_widths_and_respect_every_budget(method_name):
    runs = []
    for _ in range(2):
        method = prepared(config_with(method_name, model={"name": "cnn", "width": 1.0}, data={
            "dataset": "synthetic", "num_clients": 10, "partition": "dirichlet"}))
        trained = []
        original = method.local_update

        def recording(client, original=original, trained=trained):
            trained.append(client.assignment)
            return original(client)

        method.local_update = recording
        runs.append([r.metrics for r in engine.run_rounds(method)])
        for assignment in trained:
            level = assignment.work if method_name == "allsmall" else assignment.work.level
            assert peak(method, level) <= method.ctx.fleet.devices[assignment.client_id].memory_bytes
    strip = [[{k: v for k, v in m.items() if not k.startswith("time/")} for m in run] for run in runs]
    assert strip[0] == strip[1]
    last = strip[0][-1]
    counts = sum(v for k, v in last.items() if k.startswith("work/width_"))
    assert counts == last["round/clients"] and 0 < last["work/mean_width"] <= 1
    assert torch.isfinite(torch.tensor(last["train/loss"])) and "eval/accuracy" in last


@pytest.mark.parametrize("method_name", METHODS)
def test_each_method_trains_a_narrow_resnet18_for_two_rounds(method_name):
    options = {"levels": [0.5]}  # AllSmall: the only grid width; HeteroFL/FedRolex: sliced half-width clients
    config = config_with(method_name, {"profile": "homogeneous"}, options,
                         model={"name": "resnet18", "width": 0.125}, clients_per_round=2)
    result = engine.run(config)
    assert len(result.rounds) == 2
    assert torch.isfinite(torch.tensor(result.metric("train/loss"))).all()
    assert result.metric("work/mean_width") == [0.5, 0.5]


# --------------------------------------------------------------------------- sBN
def test_static_bn_replaces_running_statistics_by_the_training_data_statistics(synthetic_data):
    model = nn.Sequential(nn.BatchNorm2d(3))
    model[0].running_mean.fill_(7.0)
    indices = torch.arange(100)
    used = recompute_bn_statistics(model, synthetic_data, indices, batch_size=50)
    images, _ = synthetic_data.train_batch(indices)
    assert used == 100 and model[0].momentum == 0.1
    torch.testing.assert_close(model[0].running_mean, images.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    assert sorted(sbn_indices([torch.tensor([3, 1]), torch.tensor([2])], None, torch.Generator()).tolist()) == [1, 2, 3]
    subsample = sbn_indices([torch.arange(10), torch.arange(5)], 4, torch.Generator().manual_seed(0))
    assert subsample.numel() == 4 and subsample.unique().numel() == 4


def test_static_bn_on_a_data_set_stored_class_by_class_keeps_the_variance_between_classes():
    """CINIC-10 and mini-ImageNet are stored class by class. Batches walked in index order would
    each hold one class, and the cumulative average of per-batch variances would miss the spread
    between the classes' means; the shuffled order of :func:`sbn_indices` measures all of it."""
    classes, per_class = 4, 64
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = (labels * 60 + torch.randint(0, 8, (classes * per_class,))).to(torch.uint8).view(-1, 1, 1, 1)
    data = ImageDataset("sorted", images, labels, images, labels, classes, mean=[0.0], std=[1.0])
    shards = [torch.arange(i, classes * per_class, 8) for i in range(8)]
    model = nn.Sequential(nn.BatchNorm2d(1))
    recompute_bn_statistics(model, data, sbn_indices(shards, None, torch.Generator().manual_seed(0)), batch_size=32)
    true_var = (images.float() / 255).var()
    assert model[0].running_var.item() == pytest.approx(true_var.item(), rel=0.1)
    recompute_bn_statistics(model, data, torch.arange(classes * per_class), batch_size=32)  # index order
    assert model[0].running_var.item() < 0.1 * true_var.item()


# ------------------------------------------------------------------- bad input
def test_a_width_grid_outside_zero_to_one_is_a_one_line_config_error():
    for method_name in METHODS:
        with pytest.raises(ConfigError, match=r"option 'levels' contains 1.5; every width must be in \(0, 1\]"):
            prepared(config_with(method_name, options={"levels": [1.5, 0.5]}))


def test_a_fleet_that_fits_not_even_the_narrowest_width_fails_naming_the_smallest_budget():
    config = config_with("allsmall", {"profile": "uniform-mb", "low_mb": 1, "high_mb": 1}, {"levels": [1.0]},
                         model={"name": "cnn", "width": 1.0})
    with pytest.raises(MemoryBudgetError, match=r"allsmall: even the narrowest width 1 of cnn needs 4\.4 MiB "
                                                r"at batch 64, but the smallest device has 1\.0 MiB"):
        prepared(config)
    result = CliRunner().invoke(app, [
        "run", "--method", "heterofl", "--dataset", "synthetic", "--model", "cnn", "--clients", "10",
        "--clients-per-round", "3", "--rounds", "1", "--fleet", "uniform-mb", "--low-mb", "1", "--high-mb", "1",
        "--batch-size", "32", "--opt", "levels=[1.0]", "--no-tracking",
    ])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "heterofl: even the narrowest width 1 of cnn" in result.output


def test_a_model_that_cannot_be_width_sliced_is_a_one_line_config_error(monkeypatch):
    def untagged(width=None, init_key=0):
        return BlockModel(arch="plain", stem=nn.Identity(), blocks=[nn.Conv2d(3, 4, 3)],
                          head=PoolHead(4, 10, in_space=None), input_shape=(3, 16, 16), num_classes=10)

    ctx, _ = engine.prepare(config_with("heterofl", {"profile": "homogeneous"}))
    monkeypatch.setattr(ctx, "build_model", untagged)
    with pytest.raises(ConfigError, match=r"method 'heterofl' needs a width-sliceable model, but model 'plain'"):
        engine.make_method(ctx)


def test_level_models_scale_the_run_width():
    model = prepared(config_with("allsmall", {"profile": "homogeneous"})).ctx.build_model()
    assert level_model(model, 0.5).width == 0.125


# ------------------------------------------------------------------------- Scaler
def test_the_scaler_divides_every_norm_input_by_the_rate_while_training_and_leaves_evaluation_alone():
    from fedbench.kits.width_training import add_scaler, norm_layers
    from fedbench.models import build_model

    model = build_model("resnet18", (3, 16, 16), 10, width=0.0625)
    norms = norm_layers(model)
    assert add_scaler(model, 1.0) == [] and len(add_scaler(model, 0.5)) == len(norms)
    seen: list[torch.Tensor] = []
    norms[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0]))  # runs after the Scaler
    images = torch.randn(4, 3, 16, 16)
    model.train()
    model(images)
    model.eval()
    model(images)
    trained, evaluated = seen  # the first norm's input: the stem's convolution, the same in both modes
    assert torch.allclose(trained, evaluated / 0.5)


def test_in_a_model_without_norm_layers_the_scaler_divides_each_convolutions_output():
    from fedbench.kits.width_training import add_scaler
    from fedbench.models import build_model

    model = build_model("cnn", (1, 28, 28), 10, width=0.5)
    convolutions = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    plain_train = convolutions[0](torch.ones(2, 1, 28, 28))
    assert len(add_scaler(model, 0.5)) == len(convolutions) == 2
    images = torch.ones(2, 1, 28, 28)
    model.train()
    assert torch.allclose(convolutions[0](images), plain_train / 0.5)
    model.eval()
    assert torch.allclose(convolutions[0](images), plain_train)


def test_a_narrow_heterofl_client_on_the_cnn_trains_with_the_scaler():
    ctx, _ = engine.prepare(config_with("heterofl"))
    method = engine.make_method(ctx)
    narrow = [w for w in method.workloads(method.global_model, method.options) if "1/2" in w.name][0]
    hooks = [m for m in narrow.model.modules() if isinstance(m, nn.Conv2d) and m._forward_hooks]
    assert len(hooks) == 2
