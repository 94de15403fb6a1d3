"""Partitioners: properties every split must have, and the behaviour that tells them apart."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbench.config import DataConfig
from fedbench.datasets.partitioners import dirichlet, iid, natural, partition_stats, shards, writer_groups
from fedbench.errors import ConfigError

SPLITS = {
    "iid": (iid, {}),
    "dirichlet": (dirichlet, {"alpha": 0.3}),
    "dirichlet-cumsum": (dirichlet, {"alpha": 0.3, "dirichlet_variant": "cumsum"}),
    "shards": (shards, {"shards_per_client": 2}),
}
# Derandomised and without an example database: the same examples on every run and machine.
FEW = settings(max_examples=15, deadline=None, derandomize=True, database=None)


@st.composite
def labelled_sets(draw):
    """Labels of 20..300 samples over 2..10 classes, and a client count the split can serve."""
    num_classes = draw(st.integers(2, 10))
    size = draw(st.integers(20, 300))
    seed = draw(st.integers(0, 2**31))
    labels = np.random.default_rng(seed).integers(0, num_classes, size)
    clients = draw(st.integers(1, 10))
    return labels, clients, seed


def _split(name: str, labels: np.ndarray, clients: int, seed: int) -> list[np.ndarray]:
    function, fields = SPLITS[name]
    config = DataConfig(num_clients=clients, **fields)
    return function(labels, config, np.random.default_rng(seed))


@pytest.mark.parametrize("name", SPLITS)
@FEW
@given(case=labelled_sets())
def test_every_sample_is_assigned_exactly_once_and_no_client_is_empty(name, case):
    labels, clients, seed = case
    parts = _split(name, labels, clients, seed)
    assert len(parts) == clients
    assert all(part.size > 0 for part in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))


@pytest.mark.parametrize("name", SPLITS)
@FEW
@given(case=labelled_sets())
def test_the_same_seed_gives_the_same_partition(name, case):
    labels, clients, seed = case
    first, second = _split(name, labels, clients, seed), _split(name, labels, clients, seed)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def _mean_classes(alpha: float, variant: str, seeds=range(3)) -> float:
    labels = np.repeat(np.arange(10), 200)
    config = DataConfig(num_clients=20, alpha=alpha, dirichlet_variant=variant)
    means = [
        partition_stats(labels, dirichlet(labels, config, np.random.default_rng(s)), 10)["classes_per_client_mean"]
        for s in seeds
    ]
    return float(np.mean(means))


@pytest.mark.parametrize("variant", ["per-sample", "cumsum"])
def test_dirichlet_skew_grows_as_alpha_falls(variant):
    classes = [_mean_classes(alpha, variant) for alpha in (100.0, 1.0, 0.1)]
    assert classes[0] > classes[1] > classes[2]
    assert classes[0] > 9.5  # near-uniform: almost every client sees every class
    assert classes[2] < 5.0  # strongly skewed


def test_cumsum_dirichlet_gives_every_client_at_least_ten_samples_when_possible():
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet(labels, DataConfig(num_clients=20, alpha=0.1, dirichlet_variant="cumsum"), np.random.default_rng(3))
    assert min(part.size for part in parts) >= 10


def test_dirichlet_with_a_tiny_alpha_still_leaves_no_client_empty():
    labels = np.repeat(np.arange(3), 10)
    for variant in ("per-sample", "cumsum"):
        config = DataConfig(num_clients=30, alpha=1e-4, dirichlet_variant=variant)
        parts = dirichlet(labels, config, np.random.default_rng(0))
        assert min(part.size for part in parts) >= 1 and sum(part.size for part in parts) == 30


def test_shards_give_each_client_at_most_its_shard_count_of_labels():
    labels = np.repeat(np.arange(10), 100)  # 50 clients × 2 shards of 10: every shard holds one label
    parts = shards(labels, DataConfig(num_clients=50, shards_per_client=2), np.random.default_rng(0))
    classes = [np.unique(labels[part]).size for part in parts]
    assert max(classes) <= 2 and {part.size for part in parts} == {20}


def test_shards_reject_more_shards_than_samples():
    with pytest.raises(ConfigError, match=r"num_clients × shards_per_client \(10 × 3 = 30\) <= the 25"):
        shards(np.zeros(25, dtype=np.int64), DataConfig(partition="shards", num_clients=10, shards_per_client=3), np.random.default_rng(0))


# ------------------------------------------------------------------ natural
WRITERS = np.array([4, 4, 1, 9, 1, 4, 7, 7, 9, 1, 2])
WRITER_LABELS = np.arange(WRITERS.size) % 3


def test_natural_gives_one_client_per_writer_with_all_its_samples():
    parts = natural(WRITER_LABELS, DataConfig(dataset="femnist", num_clients=5), np.random.default_rng(0), WRITERS)
    # writers 1, 2, 4, 7, 9 in id order
    assert [sorted(part.tolist()) for part in parts] == [[2, 4, 9], [10], [0, 1, 5], [6, 7], [3, 8]]


@FEW
@given(clients=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_natural_with_fewer_clients_keeps_whole_writers_and_follows_the_seed(clients, seed):
    config = DataConfig(dataset="femnist", num_clients=clients)
    parts = natural(WRITER_LABELS, config, np.random.default_rng(seed), WRITERS)
    again = natural(WRITER_LABELS, config, np.random.default_rng(seed), WRITERS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    owners = [set(WRITERS[part].tolist()) for part in parts]
    assert all(len(owner) == 1 for owner in owners) and len(set().union(*owners)) == clients
    for part, owner in zip(parts, owners, strict=True):
        assert sorted(part.tolist()) == np.flatnonzero(WRITERS == owner.pop()).tolist()


def test_natural_without_writers_is_a_config_error():
    with pytest.raises(ConfigError, match=r"partition 'natural' needs a data set with writers.*'synthetic' has none"):
        natural(WRITER_LABELS, DataConfig(dataset="synthetic", num_clients=2), np.random.default_rng(0))


def test_natural_with_more_clients_than_writers_says_how_many_writers_there_are():
    with pytest.raises(ConfigError, match=r"has 5 writers, fewer than num_clients \(6\); lower --clients to 5"):
        natural(WRITER_LABELS, DataConfig(dataset="femnist", num_clients=6), np.random.default_rng(0), WRITERS)


@FEW
@given(clients=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_writer_groups_put_every_sample_on_a_device_with_whole_writers_evenly_dealt(clients, seed):
    config = DataConfig(dataset="femnist", num_clients=clients)
    parts = writer_groups(WRITER_LABELS, config, np.random.default_rng(seed), WRITERS)
    again = writer_groups(WRITER_LABELS, config, np.random.default_rng(seed), WRITERS)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert len(parts) == clients and sorted(np.concatenate(parts).tolist()) == list(range(WRITERS.size))
    owners = [set(WRITERS[part].tolist()) for part in parts]
    assert all(owners) and sum(len(o) for o in owners) == len(set(WRITERS.tolist()))  # a writer on one device
    assert max(map(len, owners)) - min(map(len, owners)) <= 1
    for part, owner in zip(parts, owners, strict=True):
        assert sorted(part.tolist()) == np.flatnonzero(np.isin(WRITERS, sorted(owner))).tolist()


def test_writer_groups_follow_the_seed_and_need_writers():
    config = DataConfig(dataset="femnist", num_clients=2)
    draws = {tuple(tuple(p.tolist()) for p in writer_groups(WRITER_LABELS, config, np.random.default_rng(s), WRITERS))
             for s in range(20)}
    assert len(draws) > 1
    with pytest.raises(ConfigError, match=r"partition 'writer-groups' needs a data set with writers"):
        writer_groups(WRITER_LABELS, DataConfig(dataset="synthetic", num_clients=2), np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"'writer-groups' on 'femnist' has 5 writers, fewer than num_clients \(6\)"):
        writer_groups(WRITER_LABELS, DataConfig(dataset="femnist", num_clients=6), np.random.default_rng(0), WRITERS)


# ------------------------------------------------------------------ bad configuration
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alpha": 0.0}, r"data.alpha \(0.0\) must be > 0"),
        ({"alpha": -1.0}, r"data.alpha \(-1.0\) must be > 0"),
        ({"shards_per_client": 0}, r"data.shards_per_client \(0\) must be >= 1"),
        ({"dirichlet_variant": "cumulative"}, r"data.dirichlet_variant \('cumulative'\) must be one of per-sample, cumsum"),
    ],
)
def test_invalid_partition_settings_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**fields)


@pytest.mark.parametrize("name", SPLITS)
def test_more_clients_than_samples_is_a_config_error(name):
    with pytest.raises(ConfigError, match=r"exceeds the number of training samples|<= the 5 training samples"):
        _split(name, np.arange(5) % 2, 6, 0)


def test_partition_stats_report_sizes_classes_and_entropy():
    labels = np.array([0, 0, 1, 1, 2, 2])
    stats = partition_stats(labels, [np.array([0, 1]), np.array([2, 3, 4, 5])], 3)
    assert (stats["size_min"], stats["size_max"], stats["size_std"], stats["num_samples"]) == (2, 4, 1.0, 6)
    assert [c["classes"] for c in stats["clients"]] == [1, 2]
    assert [c["label_entropy_bits"] for c in stats["clients"]] == [0.0, 1.0]
    assert stats["clients"][1]["label_counts"] == [0, 2, 2]


def test_a_split_with_single_sample_clients_warns_that_they_train_no_step(caplog):
    import torch

    from fedbench.config import make_config
    from fedbench.core.setup import partition, warn_of_idle_clients
    from fedbench.data import ImageDataset

    labels = torch.arange(10) % 2
    images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
    dataset = ImageDataset("tiny", images, labels, images, labels, 2, mean=[0.0], std=[1.0])
    data, _ = partition(make_config(overrides={"data": {"partition": "iid", "num_clients": 6},
                                               "clients_per_round": 2}), dataset)
    assert sorted(len(s) for s in data.shards) == [1, 1, 2, 2, 2, 2]
    warn_of_idle_clients(data)
    assert "2 of 6 clients hold a single sample" in caplog.text and "train no step" in caplog.text
    caplog.clear()
    data, _ = partition(make_config(overrides={"data": {"partition": "iid", "num_clients": 5},
                                               "clients_per_round": 2}), dataset)
    warn_of_idle_clients(data)
    assert "single sample" not in caplog.text
