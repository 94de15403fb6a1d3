"""RunConfig: validation, YAML round trip, and a stable run key."""

from __future__ import annotations

import dataclasses

import pytest

from fedbench.config import RunConfig, make_config, to_yaml
from fedbench.errors import ConfigError


def test_defaults_follow_the_papers_common_setting():
    config = RunConfig()
    assert (config.data.num_clients, config.clients_per_round, config.train.local_epochs) == (100, 10, 5)
    assert (config.train.batch_size, config.train.lr, config.train.momentum) == (64, 0.01, 0.9)
    assert config.train.weight_decay == 5e-4 and config.seed == 42
    assert config.method == "neulite"  # the method the suite exists for


def test_yaml_round_trip_gives_the_same_config(tmp_path):
    config = make_config(overrides={"rounds": 7, "data": {"alpha": 0.1}, "options": {"x": 1}})
    path = tmp_path / "c.yaml"
    path.write_text(to_yaml(config))
    assert make_config(path) == config


def test_run_key_ignores_where_data_and_logs_live_but_not_what_is_trained():
    base = make_config()
    moved = make_config(overrides={"data": {"data_dir": "/elsewhere"}, "tracking": {"experiment": "x"}})
    assert base.run_key == moved.run_key
    assert base.run_key != make_config(overrides={"seed": 1}).run_key
    assert base.run_key != make_config(overrides={"options": {"mu": 0.1}}).run_key


def test_flat_params_use_dotted_keys():
    params = make_config(overrides={"options": {"mu": 0.1}}).flat_params()
    assert params["data.alpha"] == "0.5" and params["options.mu"] == "0.1" and params["method"] == "neulite"


def test_config_is_immutable():
    config = make_config(overrides={"options": {"mu": 0.1}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rounds = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.options["mu"] = 1.0  # type: ignore[index]


def test_integers_are_accepted_where_floats_are_expected():
    assert make_config(overrides={"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rounds": 0}, "rounds (0) must be >= 1"),
        ({"train": {"momentum": 1.0}}, "train.momentum (1.0) must be in [0, 1)"),
        ({"train": {"lr": 0}}, "train.lr (0.0) must be > 0"),
        ({"eval_every": 0}, "eval_every (0) must be >= 1"),
        ({"tracking": {"enabled": "yes"}}, "tracking.enabled ('yes') must be true or false"),
        ({"data": 3}, "data must be a mapping"),
    ],
)
def test_bad_values_name_the_field_and_the_value(overrides, message):
    with pytest.raises(ConfigError) as info:
        make_config(overrides=overrides)
    assert message in str(info.value)


def test_the_run_key_fills_in_option_defaults_so_a_sweep_never_reruns_a_default():
    plain = make_config(overrides={"method": "neulite"})
    spelled_out = make_config(overrides={"method": "neulite", "options": {"lambda_max": 0.4, "sigma": 5}})
    changed = make_config(overrides={"method": "neulite", "options": {"lambda_max": 0.3}})
    assert plain.run_key == spelled_out.run_key != changed.run_key


@pytest.mark.parametrize("section, flag", [
    ("data: synthetic", {"data": {"alpha": 0.3}}),
    ("model: squeezenet", {"model": {"width": 0.5}}),
    ("train: [1, 2]", {"train": {"local_epochs": 1}}),
])
def test_a_flag_never_replaces_a_section_the_file_wrote_as_a_plain_value(tmp_path, section, flag):
    """``data: synthetic`` is a mistake for ``data: {dataset: synthetic}``: a flag that sets one key of
    the section must not turn it into defaults plus that key, which trains another data set or model."""
    path = tmp_path / "run.yaml"
    path.write_text(f"method: fedavg\n{section}\n")
    name = section.split(":")[0]
    with pytest.raises(ConfigError, match=f"^{name} must be a mapping, got") as err:
        make_config(path, flag)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"^{name} must be a mapping, got"):
        make_config(path)  # without the flag, the same section is refused as before


def test_a_setting_the_chosen_built_in_partitioner_or_fleet_ignores_is_refused():
    """A grid of partition × alpha would otherwise train its IID cell once per alpha under
    different run keys; a plugin partitioner or profile may read any setting, so it is not checked."""
    from fedbench.config.sections import DataConfig, FleetConfig

    with pytest.raises(ConfigError, match=r"^data.alpha \(0.1\) only applies to partition dirichlet \(got iid\)"):
        DataConfig(partition="iid", alpha=0.1)
    with pytest.raises(ConfigError, match=r"^data.shards_per_client \(3\) only applies to partition shards"):
        DataConfig(partition="dirichlet", shards_per_client=3)
    with pytest.raises(ConfigError, match=r"^fleet.low_mb/high_mb \(50/900\) only apply to the uniform-mb profile"):
        FleetConfig(profile="paper", low_mb=50)
    assert DataConfig(partition="my-plugin", alpha=0.1).alpha == 0.1
    assert DataConfig(partition="iid").alpha == 0.5 and FleetConfig(profile="uniform-mb", low_mb=50).low_mb == 50
