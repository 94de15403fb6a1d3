"""Partitioners: split the training labels into client shards (index arrays).

Every partitioner has the signature
``(labels, config, rng, writers=None) -> list[np.ndarray]`` and guarantees that
every sample lands in exactly one shard and that no shard is empty. They draw
only from the ``rng`` they are given, so a partition depends on the seed alone.
"""

from __future__ import annotations

import numpy as np

from fedbench.config import DataConfig
from fedbench.errors import ConfigError


def _check_enough_samples(labels: np.ndarray, num_clients: int) -> None:
    if num_clients > labels.shape[0]:
        raise ConfigError(
            f"num_clients ({num_clients}) exceeds the number of training samples ({labels.shape[0]}); "
            "lower --clients"
        )


def iid(
    labels: np.ndarray, config: DataConfig, rng: np.random.Generator, writers: np.ndarray | None = None
) -> list[np.ndarray]:
    """A uniform random permutation cut into ``num_clients`` near-equal shards."""
    _check_enough_samples(labels, config.num_clients)
    order = rng.permutation(labels.shape[0])
    return [np.sort(part) for part in np.array_split(order, config.num_clients)]


def _fill_empty_shards(owner: np.ndarray, num_clients: int, rng: np.random.Generator) -> None:
    """Give each empty client one random sample of the currently largest client (in place)."""
    counts = np.bincount(owner, minlength=num_clients)
    for client in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        sample = rng.choice(np.flatnonzero(owner == donor))
        owner[sample] = client
        counts[donor] -= 1
        counts[client] += 1


def dirichlet(
    labels: np.ndarray,
    config: DataConfig,
    rng: np.random.Generator,
    writers: np.ndarray | None = None,
    max_redraws: int = 10,
) -> list[np.ndarray]:
    """Label-Dirichlet split as in NeuLite's released code (spec common.md §1.3).

    For each class, client proportions q ~ Dir(alpha·1); each sample of the class
    goes to a client drawn from q independently. Smaller ``alpha`` = more skew.
    A draw that leaves a client empty is redrawn (up to ``max_redraws`` times);
    after that each empty client takes one sample from the largest client, so
    the split never fails and stays a function of the seed.
    """
    _check_enough_samples(labels, config.num_clients)
    n, classes = config.num_clients, np.unique(labels)
    owner = np.empty(labels.shape[0], dtype=np.int64)
    for _ in range(max_redraws + 1):
        for cls in classes:
            members = np.flatnonzero(labels == cls)
            q = rng.dirichlet(np.full(n, config.alpha))
            owner[members] = rng.choice(n, size=members.size, p=q)
        if np.bincount(owner, minlength=n).min() > 0:
            break
    else:
        _fill_empty_shards(owner, n, rng)
    order = np.argsort(owner, kind="stable")
    bounds = np.cumsum(np.bincount(owner, minlength=n))[:-1]
    return np.split(order, bounds)


def partition_stats(labels: np.ndarray, shards: list[np.ndarray], num_classes: int) -> dict:
    """Per-client sizes and label counts plus their summary, for logs and ``fedbench partition``."""
    sizes = np.array([s.size for s in shards])
    label_counts = np.stack([np.bincount(labels[s], minlength=num_classes) for s in shards])
    classes_per_client = (label_counts > 0).sum(axis=1)
    shares = label_counts / np.maximum(sizes[:, None], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(shares > 0, shares * np.log2(shares), 0.0), axis=1)
    return {
        "num_clients": len(shards),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "classes_per_client_mean": float(classes_per_client.mean()),
        "classes_per_client_min": int(classes_per_client.min()),
        "classes_per_client_max": int(classes_per_client.max()),
        "label_entropy_bits_mean": float(entropy.mean()),
        "clients": [
            {"client": i, "size": int(sizes[i]), "classes": int(classes_per_client[i]),
             "label_counts": label_counts[i].tolist()}
            for i in range(len(shards))
        ],
    }
