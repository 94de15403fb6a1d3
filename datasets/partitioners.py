"""Partitioners: split the training labels into client shards (index arrays).

Every partitioner has the signature
``(labels, config, rng, writers=None) -> list[np.ndarray]`` and guarantees that
every sample lands in exactly one shard (``natural`` with fewer clients than
writers: at most one, see there) and that no shard is empty. They draw only
from the ``rng`` they are given (numpy's PCG64, identical on every platform),
so a partition depends on the seed alone.
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
    """Label-Dirichlet split; smaller ``alpha`` = more skew (spec common.md §1.3).

    ``config.dirichlet_variant`` picks the rule. ``"per-sample"`` (default,
    NeuLite's released code): for each class, client proportions
    q ~ Dir(alpha·1); each sample of the class goes to a client drawn from q
    independently. A draw that leaves a client empty is redrawn (up to
    ``max_redraws`` times); after that each empty client takes one sample from
    the largest client, so the split never fails and stays a function of the
    seed. ``"cumsum"``: see :func:`_dirichlet_cumsum_owner`.
    """
    _check_enough_samples(labels, config.num_clients)
    n = config.num_clients
    if config.dirichlet_variant == "cumsum":
        owner = _dirichlet_cumsum_owner(labels, n, config.alpha, rng)
    else:
        owner = _dirichlet_per_sample_owner(labels, n, config.alpha, rng, max_redraws)
    order = np.argsort(owner, kind="stable")
    bounds = np.cumsum(np.bincount(owner, minlength=n))[:-1]
    return np.split(order, bounds)


def _dirichlet_per_sample_owner(
    labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator, max_redraws: int
) -> np.ndarray:
    classes = np.unique(labels)
    owner = np.empty(labels.shape[0], dtype=np.int64)
    for _ in range(max_redraws + 1):
        for cls in classes:
            members = np.flatnonzero(labels == cls)
            q = rng.dirichlet(np.full(n, alpha))
            owner[members] = rng.choice(n, size=members.size, p=q)
        if np.bincount(owner, minlength=n).min() > 0:
            break
    else:
        _fill_empty_shards(owner, n, rng)
    return owner


# DepthFL's split redraws until every client holds at least this many samples.
CUMSUM_MIN_SAMPLES = 10
CUMSUM_MAX_REDRAWS = 100


def _dirichlet_cumsum_owner(labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """The cumulative-proportion split of DepthFL's code ([C-DFL], spec common.md §1.3).

    For each class (shuffled), q ~ Dir(alpha·1); clients already holding
    ``total / n`` samples get q = 0 (the balancing rule); the class is cut at
    the cumulative proportions. The whole split is redrawn until every client
    holds ``min(10, total // n)`` samples, at most ``CUMSUM_MAX_REDRAWS`` times
    (DepthFL loops without a bound); after that each empty client takes one
    sample from the largest client.
    """
    total = labels.shape[0]
    min_size = max(1, min(CUMSUM_MIN_SAMPLES, total // n))
    classes = np.unique(labels)
    owner = np.empty(total, dtype=np.int64)
    for _ in range(CUMSUM_MAX_REDRAWS):
        counts = np.zeros(n, dtype=np.int64)
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            open_clients = counts < total / n
            q = np.where(open_clients, rng.dirichlet(np.full(n, alpha)), 0.0)
            if q.sum() <= 0:  # every open client drew an underflowed 0 (tiny alpha): share evenly
                q = open_clients.astype(np.float64)
            cuts = (np.cumsum(q / q.sum()) * members.size).astype(np.int64)[:-1]
            sizes = np.diff(np.concatenate(([0], cuts, [members.size])))
            owner[members] = np.repeat(np.arange(n), sizes)
            counts += sizes
        if counts.min() >= min_size:
            break
    else:
        _fill_empty_shards(owner, n, rng)
    return owner


def shards(
    labels: np.ndarray, config: DataConfig, rng: np.random.Generator, writers: np.ndarray | None = None
) -> list[np.ndarray]:
    """FedAvg's pathological non-IID split (McMahan et al., 2017): k label-sorted shards per client.

    The samples are sorted by label (ties in a seeded random order), cut into
    ``num_clients × shards_per_client`` near-equal shards, and each client is
    dealt ``shards_per_client`` shards at random. Every shard holds at least
    one sample (checked), so every client is non-empty.
    """
    n, k = config.num_clients, config.shards_per_client
    if n * k > labels.shape[0]:
        raise ConfigError(
            f"shards needs num_clients × shards_per_client ({n} × {k} = {n * k}) <= the "
            f"{labels.shape[0]} training samples; lower --clients or data.shards_per_client"
        )
    shuffled = rng.permutation(labels.shape[0])
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, n * k)
    deal = rng.permutation(n * k).reshape(n, k)
    return [np.sort(np.concatenate([pieces[s] for s in hand])) for hand in deal]


def natural(
    labels: np.ndarray, config: DataConfig, rng: np.random.Generator, writers: np.ndarray | None = None
) -> list[np.ndarray]:
    """One client per writer (FEMNIST), keeping each writer's samples together.

    With ``num_clients`` equal to the number of writers every writer is a
    client. With fewer, a seeded random choice of ``num_clients`` writers
    become the clients (how the Fig. 5(a) grid makes 120/240/500 devices) and
    the other writers' samples are left out of training. Clients are ordered
    by writer id. More clients than writers is an error. A writer appears in
    the data only with samples, so no client is empty.
    """
    ids, writers = _writer_ids(labels, config, writers, "natural")
    chosen = ids if config.num_clients == ids.size else np.sort(rng.choice(ids, config.num_clients, replace=False))
    order = np.argsort(writers, kind="stable")
    ordered = writers[order]
    starts = np.searchsorted(ordered, chosen, side="left")
    stops = np.searchsorted(ordered, chosen, side="right")
    return [order[start:stop] for start, stop in zip(starts, stops, strict=True)]


def writer_groups(
    labels: np.ndarray, config: DataConfig, rng: np.random.Generator, writers: np.ndarray | None = None
) -> list[np.ndarray]:
    """Every writer's samples on ``num_clients`` devices, each device a group of whole writers.

    A seeded shuffle of the writers is cut into ``num_clients`` groups whose writer counts differ
    by at most one, so the whole data set trains however few the devices: the other reading of
    the paper's FEMNIST runs (all 805,263 images, 120/240/500 devices) than :func:`natural`'s
    choice of one writer per device. More clients than writers is an error.
    """
    ids, writers = _writer_ids(labels, config, writers, "writer-groups")
    group_of_writer = np.empty(ids.size, dtype=np.int64)
    for group, members in enumerate(np.array_split(rng.permutation(ids.size), config.num_clients)):
        group_of_writer[members] = group
    group_of_sample = group_of_writer[np.searchsorted(ids, writers)]
    order = np.argsort(group_of_sample, kind="stable")
    bounds = np.cumsum(np.bincount(group_of_sample, minlength=config.num_clients))[:-1]
    return np.split(order, bounds)


def _writer_ids(
    labels: np.ndarray, config: DataConfig, writers: np.ndarray | None, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct writers and the per-sample writer array, checked for ``name``'s needs."""
    if writers is None:
        raise ConfigError(
            f"partition '{name}' needs a data set with writers (e.g. femnist); '{config.dataset}' has none: "
            "use --partition dirichlet, iid or shards"
        )
    writers = np.asarray(writers)
    if writers.shape != labels.shape:
        raise ConfigError(
            f"dataset '{config.dataset}' gives {writers.shape[0]} writer ids for {labels.shape[0]} samples; "
            "its loader is broken"
        )
    ids = np.unique(writers)
    if config.num_clients > ids.size:
        raise ConfigError(
            f"partition '{name}' on '{config.dataset}' has {ids.size} writers, fewer than num_clients "
            f"({config.num_clients}); lower --clients to {ids.size} or less"
        )
    return ids, writers


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
        "num_samples": int(sizes.sum()),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "size_std": float(sizes.std()),
        "classes_per_client_mean": float(classes_per_client.mean()),
        "classes_per_client_min": int(classes_per_client.min()),
        "classes_per_client_max": int(classes_per_client.max()),
        "label_entropy_bits_mean": float(entropy.mean()),
        "clients": [
            {"client": i, "size": int(sizes[i]), "classes": int(classes_per_client[i]),
             "label_entropy_bits": float(entropy[i]), "label_counts": label_counts[i].tolist()}
            for i in range(len(shards))
        ],
    }
