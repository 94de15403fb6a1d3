"""Fleet profiles: reproducible draws, valid budgets, the paper fit realised, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from fedbench.cli.main import app
from fedbench.config import FleetConfig, make_config
from fedbench.errors import ConfigError, UnknownNameError
from fedbench.simulation.fleet import DEVICE_CLASSES, MIB, make_fleet, quantile_budgets
from fedbench.simulation.fleet_fit import (
    Target,
    Threshold,
    choices,
    fitted_shares,
    isotonic_non_increasing,
    knot_value,
    knots_from_fit,
)
from fedbench.simulation.fleet_paper import PAPER_FIT_TABLE, PAPER_REFERENCE_PEAK_BYTES

runner = CliRunner()


def budgets(fleet):
    return [d.memory_bytes for d in fleet.devices]


def test_the_same_seed_draws_the_same_fleet_and_another_seed_another():
    config = FleetConfig(profile="uniform-mb")
    assert make_fleet(config, 50, seed=1) == make_fleet(config, 50, seed=1)
    assert budgets(make_fleet(config, 50, seed=1)) != budgets(make_fleet(config, 50, seed=2))


def test_uniform_mb_budgets_are_whole_mib_within_the_bounds():
    fleet = make_fleet(FleetConfig(profile="uniform-mb", low_mb=100, high_mb=900), 200, seed=42)
    mib = np.array(budgets(fleet)) / MIB
    assert np.all(mib == np.floor(mib))
    assert mib.min() >= 100 and mib.max() <= 900


def test_homogeneous_devices_fit_everything():
    fleet = make_fleet(FleetConfig(), 10, seed=0)
    assert fleet.unlimited
    assert fleet.eligible(10**15) == list(range(10))


def test_every_device_gets_a_speed_and_bandwidth_from_the_class_table():
    fleet = make_fleet(FleetConfig(profile="uniform-mb"), 40, seed=3)
    table = {c.name: c for c in DEVICE_CLASSES}
    for device in fleet.devices:
        assert device.flops_per_s == table[device.device_class].flops_per_s
        assert device.bandwidth_bytes_per_s == table[device.device_class].bandwidth_bytes_per_s


def test_the_paper_profile_realises_the_fitted_participation_rates():
    fleet = make_fleet(FleetConfig(profile="paper"), 100, seed=42)
    for _method, _model, threshold, _paper, fitted, _source in PAPER_FIT_TABLE:
        assert fleet.participation_rate(threshold) == pytest.approx(fitted)


def test_relative_budgets_scale_with_the_reference_peak():
    reference = make_fleet(FleetConfig(profile="relative"), 100, 42, lambda: PAPER_REFERENCE_PEAK_BYTES)
    half = make_fleet(FleetConfig(profile="relative"), 100, 42, lambda: PAPER_REFERENCE_PEAK_BYTES // 2)
    paper = make_fleet(FleetConfig(profile="paper"), 100, 42)
    assert np.allclose(budgets(reference), budgets(paper), rtol=1e-6)
    assert np.allclose(np.array(budgets(half)) * 2, budgets(reference), rtol=1e-6)
    assert reference.participation_rate(PAPER_REFERENCE_PEAK_BYTES) == half.participation_rate(
        PAPER_REFERENCE_PEAK_BYTES // 2
    )


@pytest.mark.parametrize("train", [{"batch_size": 16}, {"optimizer": "adam"}, {"lr": 0.1}],
                         ids=["batch-16", "adam", "lr"])
def test_the_relative_fleet_is_the_same_whatever_the_runs_optimizer_and_batch(train):
    """The devices belong to the model and data set, not to a method's training: a smaller batch or
    Adam changes who fits (the full model's PR), never the budgets (scaled at the paper's SGD, batch 64)."""
    from fedbench.core import setup

    def prepared(**train_values):
        return setup.prepare(make_config(overrides={
            "data": {"dataset": "synthetic", "num_clients": 50}, "model": {"name": "cnn", "width": 0.5},
            "fleet": {"profile": "relative"}, "train": train_values, "tracking": {"enabled": False}}))[0]

    paper, other = prepared(), prepared(**train)
    assert budgets(other.fleet) == budgets(paper.fleet)
    assert other.reference_peak_bytes() == paper.reference_peak_bytes() == paper.full_model_peak_bytes()
    expected = (np.array(budgets(paper.fleet)) >= other.full_model_peak_bytes()).mean()
    assert other.participation_metrics()["participation/full_model_rate"] == pytest.approx(expected)
    if "lr" not in train:
        assert other.full_model_peak_bytes() != paper.full_model_peak_bytes()


def test_isotonic_fit_pools_adjacent_violators_into_their_mean():
    assert isotonic_non_increasing([0.11, 0.18, 0.22, 0.0], [1, 1, 1, 1]) == pytest.approx([0.17, 0.17, 0.17, 0.0])
    assert isotonic_non_increasing([0.5, 0.1, 0.3], [1, 1, 1e6]) == pytest.approx([0.5, 0.3, 0.3], abs=1e-5)


def test_knots_with_equal_probability_leave_no_budget_between_them():
    knots = knots_from_fit([200.0, 300.0, 400.0], [0.5, 0.5, 0.0])
    values = quantile_budgets(knots, np.linspace(0.001, 0.999, 999))
    assert not np.any((values > 200.0) & (values < 300.0))
    assert values.max() <= 400.0


@pytest.mark.parametrize("model", ["resnet18", "vgg11_bn", "squeezenet", "resnet34"])
def test_under_the_paper_fleet_some_neulite_stage_fits_every_device(model):
    """The paper's NeuLite PR of 100 % (Tables 1 and 2): the smallest budget holds the cheapest stage."""
    from fedbench.reports.memory_table import memory_rows

    rows = memory_rows(model, "cifar10", 64, "neulite", "paper")
    assert max(r["pr"] for r in rows if r["submodel"].startswith("stage")) == 1.0
    cheapest = min(r["peak_bytes"] for r in rows if r["submodel"].startswith("stage"))
    for seed, n in ((0, 10), (7, 1000), (123, 37)):  # any draw, not just the fitted seed-42 fleet of 100
        assert min(budgets(make_fleet(FleetConfig(profile="paper"), n, seed))) >= cheapest


def _threshold(method: str, model: str, pr: float, mib: float, exact: bool = False, variant: str = "") -> Threshold:
    return Threshold(Target(method, model, pr, exact=exact), int(mib * MIB), "test", variant or model)


def test_hard_targets_bound_the_fit_and_the_others_are_fitted_between_them():
    ordered = [
        _threshold("depthfl", "a", 0.4, 100),            # below a workload everyone must fit: forced to 1
        _threshold("neulite", "b", 1.0, 150, exact=True),
        _threshold("exclusivefl", "c", 0.1, 200),         # c and d violate the order: pooled
        _threshold("depthfl", "d", 0.5, 250),
        _threshold("exclusivefl", "e", 0.0, 300, exact=True),
        _threshold("depthfl", "f", 0.3, 400),             # above a workload nobody may fit: forced to 0
    ]
    assert fitted_shares(ordered) == pytest.approx([1.0, 1.0, 0.3, 0.3, 0.0, 0.0])


def test_contradictory_hard_targets_are_refused():
    with pytest.raises(SystemExit, match="contradict"):
        fitted_shares([_threshold("exclusivefl", "a", 0.0, 100, exact=True),
                       _threshold("neulite", "b", 1.0, 200, exact=True)])


def test_a_hard_target_must_be_everyone_or_nobody():
    with pytest.raises(ValueError, match="PR 0 or 1"):
        Target("neulite", "resnet18", 0.5, exact=True)


def test_one_variant_stands_for_a_model_in_every_target_of_a_fit():
    variants = [
        _threshold("exclusivefl", "squeezenet", 0.11, 280, variant="squeezenet"),
        _threshold("exclusivefl", "squeezenet", 0.11, 880, variant="squeezenet_nopool"),
        _threshold("neulite", "squeezenet", 1.0, 110, exact=True, variant="squeezenet"),
        _threshold("neulite", "squeezenet", 1.0, 300, exact=True, variant="squeezenet_nopool"),
        _threshold("exclusivefl", "resnet18", 0.18, 400),
    ]
    picked = [sorted((t.target.method, t.model) for t in choice) for choice in choices(variants)]
    assert picked == [
        [("exclusivefl", "resnet18"), ("exclusivefl", "squeezenet"), ("neulite", "squeezenet")],
        [("exclusivefl", "resnet18"), ("exclusivefl", "squeezenet_nopool"), ("neulite", "squeezenet_nopool")],
    ]


def test_knots_of_hard_shares_round_to_the_side_that_keeps_them_exact():
    assert knot_value(142.9271, 1.0) == 142.928 and knot_value(142.928, 1.0) == 142.928  # at or above
    assert knot_value(684.5181, 0.0) == 684.518 and knot_value(684.518, 0.0) == 684.517  # strictly below
    assert knot_value(397.3446, 0.2) == 397.345


def test_an_unknown_fleet_profile_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown fleet profile 'papr' \\(did you mean 'paper'\\?\\)"):
        make_fleet(FleetConfig(profile="papr"), 10, seed=0)


@pytest.mark.parametrize(
    ("values", "message"),
    [({"low_mb": 0}, r"fleet.low_mb \(0\) must be >= 1"), ({"low_mb": 500, "high_mb": 100}, r"fleet.high_mb \(100\) must be >= fleet.low_mb \(500\)")],
)
def test_budgets_at_or_below_zero_or_low_above_high_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(overrides={"fleet": values})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fleet", "bogus"], "unknown fleet profile 'bogus'"),
        (["--fleet", "uniform-mb", "--low-mb", "-5"], "fleet.low_mb (-5) must be >= 1"),
        (["--fleet", "uniform-mb", "--low-mb", "900", "--high-mb", "100"], "fleet.high_mb (100) must be >= fleet.low_mb (900)"),
        (["--batch-size", "1"], "train.batch_size (1) must be >= 2"),
    ],
)
def test_fedbench_memory_rejects_bad_input_with_one_line_and_exit_code_2(args, needle):
    result = runner.invoke(app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", *args])
    assert result.exit_code == 2
    assert needle in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_fedbench_memory_prints_one_json_row_for_a_method_without_sub_models():
    import json

    result = runner.invoke(
        app, ["memory", "--model", "cnn", "--dataset", "fashion-mnist", "--batch-size", "64",
              "--method", "exclusivefl", "--fleet", "relative", "--json"],
    )
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["rows"]
    assert row["submodel"] == "full"
    assert row["peak_bytes"] == (
        row["params_bytes"] + row["grads_bytes"] + row["optimizer_bytes"] + row["activations_bytes"]
    )
    assert row["pr"] == pytest.approx(PAPER_FIT_TABLE[0][4])  # relative keeps ResNet18's share


def test_eligible_devices_are_exactly_those_whose_budget_holds_the_peak_boundary_included():
    fleet = make_fleet(FleetConfig(profile="uniform-mb", low_mb=100, high_mb=900), 300, seed=3)
    for peak in (0, 100 * MIB, budgets(fleet)[7], 500 * MIB + 1, 10**15):
        assert fleet.eligible(peak) == [d.device_id for d in fleet.devices if d.fits(peak)]
