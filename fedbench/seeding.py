"""Derived random streams: every draw is a function of (seed, purpose, round, client).

A client's local work never reads a shared generator, so results do not depend
on the order in which clients are trained — a process pool or a Ray cluster
reproduces the serial run bit for bit.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """Purposes of random draws; each gets an independent stream."""

    PARTITION = 1
    MODEL_INIT = 2
    SELECTION = 3
    CLIENT = 4
    FLEET = 5
    METHOD = 6


def derive_seed(seed: int, stream: Stream, *keys: int) -> int:
    """A 63-bit seed from the run seed, the stream and any integer keys (each >= 0).

    ``SeedSequence`` pads short entropy with zeros, so keys that differ only by trailing zeros give
    the same seed: ``(r, 0)`` draws what ``(r,)`` draws. Within one stream, give every kind of
    draw the same number of keys and a key of its own (e.g. ``(round, 0)`` and ``(tier, 1)``)."""
    state = np.random.SeedSequence([seed, int(stream), *map(int, keys)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def numpy_rng(seed: int, stream: Stream, *keys: int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def torch_generator(seed: int, stream: Stream, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))
