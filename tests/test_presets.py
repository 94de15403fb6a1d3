"""Learning-rate schedules and the `paper` / `official` training presets (spec decisions Q7)."""

from __future__ import annotations

import math

import pytest
import torch

from fedbench.config import TrainConfig, make_config, to_yaml
from fedbench.errors import ConfigError, PluginError
from fedbench.sweep import load_grid

ROUNDS = 40


def torch_lrs(scheduler_type: type, rounds: int, lr: float, **kwargs: object) -> list[float]:
    """The lr of each of ``rounds`` rounds under a torch scheduler stepped once per round."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_type(optimizer, **kwargs)
    lrs = []
    for _ in range(rounds):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def schedule(train: TrainConfig, rounds: int = ROUNDS) -> list[float]:
    return [train.lr_at(t, rounds) for t in range(rounds)]


def test_exponential_and_multistep_schedules_are_torchs_schedulers_stepped_once_a_round():
    exponential = TrainConfig(lr=0.1, lr_schedule="exponential", lr_decay=0.998)
    assert schedule(exponential) == pytest.approx(
        torch_lrs(torch.optim.lr_scheduler.ExponentialLR, ROUNDS, 0.1, gamma=0.998), rel=1e-12)
    # HeteroFL's [150, 250] of 400 rounds, as fractions: the same rounds at 400, scaled (rounded
    # half up) at 40, 4 and 1 (a milestone at round 0 decays from the first round, as in PyTorch).
    multistep = TrainConfig(lr=0.1, lr_schedule="multistep", lr_decay=0.1, lr_milestones=(0.375, 0.625))
    for rounds, milestones in ((400, [150, 250]), (ROUNDS, [15, 25]), (4, [2, 3]), (1, [0, 1])):
        assert schedule(multistep, rounds) == pytest.approx(
            torch_lrs(torch.optim.lr_scheduler.MultiStepLR, rounds, 0.1, milestones=milestones, gamma=0.1), rel=1e-12)


def test_cosine_is_progfeds_formula_floored_at_lr_min_and_constant_never_changes():
    cosine = TrainConfig(lr=0.1, lr_schedule="cosine", lr_min=1e-6)
    expected = [max(0.1 * (1 + math.cos(math.pi * (t - 1) / (ROUNDS - 1))) / 2, 1e-6) for t in range(1, ROUNDS + 1)]
    assert schedule(cosine) == pytest.approx(expected, rel=1e-12)
    assert schedule(cosine)[0] == 0.1 and schedule(cosine)[-1] == 1e-6
    assert schedule(TrainConfig(lr=0.1)) == [0.1] * ROUNDS
    assert cosine.lr_at(0, 1) == 0.1  # a one-round run trains at the initial lr
    assert TrainConfig(lr=0.1, lr_schedule="exponential", lr_decay=0.5, lr_min=0.02).lr_at(10, ROUNDS) == 0.02


def test_a_round_trains_with_a_constant_config_holding_its_lr():
    train = TrainConfig(lr=0.1, lr_schedule="multistep", lr_decay=0.5, lr_milestones=(0.5,), batch_size=10)
    late = train.at_round(30, ROUNDS)
    assert (late.lr, late.lr_schedule, late.batch_size) == (0.05, "constant", 10)
    constant = TrainConfig(lr=0.1)
    assert constant.at_round(30, ROUNDS) is constant


@pytest.mark.parametrize(("values", "message"), [
    ({"lr_schedule": "cosin"}, "did you mean 'cosine'"),
    ({"lr_schedule": "multistep"}, "needs train.lr_milestones"),
    ({"lr_schedule": "multistep", "lr_milestones": (0.6, 0.4)}, "must be increasing fractions"),
    ({"lr_schedule": "multistep", "lr_milestones": (150.0,)}, "must be increasing fractions"),
    ({"lr_milestones": (0.5,)}, "only apply to lr_schedule multistep"),
    ({"lr_schedule": "cosine", "lr_decay": 0.5}, "only applies to lr_schedule exponential or multistep"),
    ({"lr_schedule": "exponential", "lr_decay": 1.5}, "must be in (0, 1]"),
    ({"lr_min": 0.5}, "must be in [0, train.lr"),
    ({"lr_min": 0.001}, "only applies to a schedule that lowers the lr"),
])
def test_a_schedule_that_cannot_mean_what_it_says_is_refused_by_name(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(**values)


def test_the_official_preset_is_each_methods_own_code_and_paper_the_common_setting():
    heterofl = make_config(overrides={"method": "heterofl", "preset": "official"}).train
    assert (heterofl.lr, heterofl.batch_size, heterofl.lr_schedule, heterofl.lr_milestones) == (
        0.1, 10, "multistep", (0.375, 0.625))
    depthfl = make_config(overrides={"method": "depthfl", "preset": "official"}).train
    assert (depthfl.lr, depthfl.momentum, depthfl.weight_decay, depthfl.batch_size, depthfl.lr_decay) == (
        0.1, 0.0, 1e-3, 50, 0.998)
    progfed = make_config(overrides={"method": "progfed", "preset": "official"}).train
    assert (progfed.lr_schedule, progfed.lr_min, progfed.weight_decay) == ("cosine", 1e-6, 1e-4)
    fedrolex = make_config(overrides={"method": "fedrolex", "preset": "official"}).train
    assert (fedrolex.optimizer, fedrolex.momentum, fedrolex.lr, fedrolex.weight_decay, fedrolex.local_epochs,
            fedrolex.batch_size, fedrolex.lr_decay, fedrolex.lr_milestones) == (
        "sgd", 0.9, 2e-4, 1e-3, 1, 10, 0.25, (0.25, 0.375))
    for method in ("neulite", "fedavg", "oort", "tifl"):  # their own code is the common setting
        assert make_config(overrides={"method": method, "preset": "official"}).train == TrainConfig()
    assert make_config(overrides={"method": "depthfl", "preset": "paper"}).train == TrainConfig()


def test_a_preset_fills_what_is_not_given_and_every_given_value_wins_over_it(tmp_path, caplog):
    import logging

    path = tmp_path / "run.yaml"
    path.write_text("method: heterofl\ntrain: {lr: 0.05, local_epochs: 2}\n")
    assert make_config(path).train.lr == 0.05  # no preset: the file's values
    with caplog.at_level(logging.WARNING, logger="fedbench.config"):
        official = make_config(path, {"preset": "official"}).train
    assert (official.lr, official.local_epochs, official.batch_size, official.lr_schedule) == (0.05, 2, 10, "multistep")
    assert ("preset official: the values given win over the preset's: train.local_epochs=2 (preset: 5), "
            "train.lr=0.05 (preset: 0.1)") in caplog.text
    flagged = make_config(overrides={"method": "heterofl", "preset": "official", "train": {"local_epochs": 1}}).train
    assert (flagged.lr, flagged.local_epochs, flagged.batch_size) == (0.1, 1, 10)
    assert make_config(overrides={"method": "depthfl", "preset": "paper"}).train == TrainConfig()


def test_naming_a_schedule_or_optimizer_over_a_preset_drops_the_presets_values_that_belong_to_it():
    constant = make_config(overrides={"method": "heterofl", "preset": "official",
                                      "train": {"lr_schedule": "constant"}}).train
    assert (constant.lr, constant.batch_size, constant.lr_schedule, constant.lr_milestones) == (0.1, 10, "constant", ())
    cosine = make_config(overrides={"method": "depthfl", "preset": "official", "train": {"lr_schedule": "cosine"}}).train
    assert (cosine.lr_schedule, cosine.lr_decay, cosine.momentum) == ("cosine", TrainConfig.lr_decay, 0.0)
    adam = make_config(overrides={"method": "depthfl", "preset": "official", "train": {"optimizer": "adam"}}).train
    assert (adam.optimizer, adam.momentum, adam.batch_size) == ("adam", TrainConfig.momentum, 50)


def test_a_stored_config_runs_again_as_it_was_with_config_or_resume(tmp_path):
    for overrides in ({"method": "depthfl", "preset": "official", "train": {"local_epochs": 1}},
                      {"method": "heterofl", "preset": "paper", "train": {"lr": 0.1}}):
        config = make_config(overrides=overrides)
        path = tmp_path / "config.yaml"
        path.write_text(to_yaml(config))
        stored = make_config(path)
        assert stored == config and stored.run_key == config.run_key


def test_the_preset_is_a_label_and_constant_lr_runs_keep_their_run_keys():
    plain = make_config(overrides={"method": "depthfl"})
    assert make_config(overrides={"method": "depthfl", "preset": "paper"}).run_key == plain.run_key
    assert make_config(overrides={"method": "neulite", "preset": "official"}).run_key == \
        make_config(overrides={"method": "neulite"}).run_key
    assert make_config(overrides={"method": "depthfl", "preset": "official"}).run_key != plain.run_key
    scheduled = make_config(overrides={"method": "depthfl", "train": {"lr_schedule": "cosine"}})
    assert scheduled.run_key != plain.run_key
    assert "train.lr_schedule" in plain.flat_params() and plain.flat_params()["preset"] == ""


def test_a_grid_axis_picks_the_preset_per_cell_and_the_grids_own_values_beat_the_preset(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("experiment: presets\nbase: {method: depthfl, train: {lr: 0.05}}\n"
                    "axes:\n  preset: [paper, official]\n  train.local_epochs: [1]\n")
    paper, official = (cell.config.train for cell in load_grid(grid).cells)
    assert (paper.lr, paper.local_epochs, paper.batch_size) == (0.05, 1, 64)
    assert (official.lr, official.local_epochs, official.momentum, official.batch_size) == (0.05, 1, 0.0, 50)


def test_every_client_of_a_round_trains_with_that_rounds_lr_and_the_run_logs_it(monkeypatch, tiny_config):
    import dataclasses

    from fedbench import engine
    from fedbench.core import method as method_module

    seen: list[float] = []
    real = method_module.local_sgd

    def spy(model, dataset, indices, train, generator, **kwargs):
        seen.append(train.lr)
        return real(model, dataset, indices, train, generator, **kwargs)

    monkeypatch.setattr(method_module, "local_sgd", spy)
    train = dataclasses.replace(tiny_config.train, lr_schedule="exponential", lr_decay=0.5)
    result = engine.run(dataclasses.replace(tiny_config, train=train, rounds=3))
    per_round = tiny_config.clients_per_round
    assert seen == pytest.approx([0.05] * per_round + [0.025] * per_round + [0.0125] * per_round, rel=1e-12)
    assert result.metric("train/lr") == pytest.approx([0.05, 0.025, 0.0125], rel=1e-12)
    assert "train/lr" not in engine.run(dataclasses.replace(tiny_config, rounds=1)).rounds[0].metrics


def test_the_official_optimizer_without_momentum_frees_the_momentum_memory_the_fleet_compares():
    from fedbench.memory.model import MemoryModel, SGDSpec
    from fedbench.models import build_model

    model = build_model("cnn", (1, 28, 28), 10)
    paper = make_config(overrides={"method": "depthfl"}).train
    official = make_config(overrides={"method": "depthfl", "preset": "official"}).train
    with_momentum = MemoryModel(optimizer=SGDSpec.from_train(paper)).report(model, batch_size=50)
    without = MemoryModel(optimizer=SGDSpec.from_train(official)).report(model, batch_size=50)
    assert with_momentum.optimizer_bytes == with_momentum.params_bytes - sum(b.numel() * b.element_size() for b in model.buffers())
    assert without.optimizer_bytes == 0 and without.peak_bytes < with_momentum.peak_bytes


def test_a_plugin_declaring_an_official_setting_that_is_not_a_training_value_fails_at_load():
    from fedbench.api import Method
    from fedbench.core.method import validate_method

    class Typo(Method):
        official_train = {"learning_rate": 0.1}

    class Bad(Method):
        official_train = {"lr_schedule": "multistep"}

    with pytest.raises(PluginError, match="'learning_rate'"):
        validate_method("typo", Typo)
    with pytest.raises(PluginError, match="needs train.lr_milestones"):
        validate_method("bad", Bad)


def test_list_presets_shows_each_methods_own_setting_and_a_run_says_what_its_preset_set():
    import json

    from typer.testing import CliRunner

    from fedbench.cli.main import app

    runner = CliRunner()
    table = runner.invoke(app, ["list", "presets"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    depthfl = next(line for line in table.output.splitlines() if "depthfl" in line)
    assert [cell.strip() for cell in depthfl.strip("│ ").split("│")] == [
        "official", "depthfl", "SGD 0", "0.1", "×0.998 a round", "0.001", "5", "50"]
    fedrolex = next(line for line in table.output.splitlines() if "fedrolex" in line)
    assert [cell.strip() for cell in fedrolex.strip("│ ").split("│")][2:5] == ["SGD 0.9", "0.0002", "×0.25 at 0.25R, 0.375R"]
    assert "official is paper for: " in table.output and "neulite" in table.output.split("official is paper for: ")[1]
    rows = json.loads(runner.invoke(app, ["list", "presets", "--json"]).output)["presets"]
    assert {"method": "heterofl", "preset": "official", "lr_milestones": [0.375, 0.625]}.items() <= next(
        r for r in rows if r["method"] == "heterofl" and r["preset"] == "official").items()
    run = runner.invoke(app, ["run", "--method", "progfed", "--preset", "official", "--dataset", "synthetic",
                              "--clients", "4", "--clients-per-round", "2", "--rounds", "1", "--local-epochs", "1",
                              "--model", "cnn", "--width", "0.25", "--no-tracking"], env={"COLUMNS": "80"})
    assert run.exit_code == 0, run.output
    assert ("progfed, official preset: SGD, momentum 0.9, lr 0.1 (cosine, ≥ 1e-06), weight decay 0.0001, "
            "1 local epoch, batch 50") in run.output


def test_adam_is_refused_with_sgds_momentum_and_keeps_two_moments_the_fleet_compares():
    from fedbench.memory.model import MemoryModel, optimizer_spec
    from fedbench.models import build_model

    with pytest.raises(ConfigError, match=r"train.momentum \(0.0\) is SGD's; adam uses its own moments"):
        TrainConfig(optimizer="adam", momentum=0.0)
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        TrainConfig(optimizer="adamw")
    model = build_model("cnn", (1, 28, 28), 10)
    trained = sum(p.numel() * p.element_size() for p in model.parameters())
    adam = MemoryModel(optimizer=optimizer_spec(TrainConfig(optimizer="adam"))).report(model, batch_size=10)
    sgd = MemoryModel(optimizer=optimizer_spec(TrainConfig())).report(model, batch_size=10)
    assert adam.optimizer_bytes == 2 * trained and sgd.optimizer_bytes == trained
    assert adam.peak_bytes > sgd.peak_bytes
    assert make_config(overrides={"train": {"optimizer": "sgd"}}).run_key == make_config().run_key


def test_every_client_of_an_adam_run_trains_with_adam_at_the_rounds_lr(monkeypatch, tiny_config):
    import dataclasses

    from fedbench import engine
    from fedbench.training import loop

    built = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda params, train: built.append(real(params, train)) or built[-1])
    train = dataclasses.replace(tiny_config.train, optimizer="adam", lr=2e-3, weight_decay=1e-3,
                                lr_schedule="exponential", lr_decay=0.5)
    result = engine.run(dataclasses.replace(tiny_config, method="fedrolex", train=train, rounds=2))
    assert len(built) == 2 * tiny_config.clients_per_round and {type(o).__name__ for o in built} == {"LocalAdam"}
    assert [o.lr for o in built] == [2e-3] * tiny_config.clients_per_round + [1e-3] * tiny_config.clients_per_round
    assert all(o.weight_decay == 1e-3 for o in built) and all(math.isfinite(x) for x in result.metric("train/loss"))


def test_fedbench_memory_traces_each_method_at_its_presets_batch_and_optimizer():
    import json

    from typer.testing import CliRunner

    from fedbench.cli.main import app

    def rows(*extra):
        result = CliRunner().invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--method",
                                          "depthfl", "--fleet", "relative", "--json", *extra])
        assert result.exit_code == 0, result.output
        return {row["submodel"]: row for row in json.loads(result.output)["rows"]}

    paper, official = rows(), rows("--preset", "official")
    assert paper["depth2"]["optimizer_bytes"] > 0 and official["depth2"]["optimizer_bytes"] == 0  # no momentum
    assert official["depth1"]["activations_bytes"] < paper["depth1"]["activations_bytes"]  # batch 50, not 64
    # One fleet for both (the relative fleet's scale is the paper's training): the official SGD
    # without momentum at batch 50 is lighter, so more devices fit each depth (presets.md).
    assert (paper["depth1"]["pr"], paper["depth2"]["pr"]) == (0.32, 0.02)
    assert (official["depth1"]["pr"], official["depth2"]["pr"]) == (1.0, 0.09)
    assert rows("--preset", "official", "--batch-size", "64")["depth1"]["activations_bytes"] == \
        paper["depth1"]["activations_bytes"]  # a flag beats the preset
    bad = CliRunner().invoke(app, ["memory", "--model", "cnn", "--preset", "offical"])
    assert bad.exit_code == 2 and "--preset ('offical') must be one of paper, official" in bad.output
