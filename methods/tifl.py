"""TiFL: tier-based client selection (Chai et al., "TiFL: A Tier-based Federated Learning
System", HPDC 2020), as specified in spec baselines.md §9 and decisions Q8, Q18.

Every eligible device's latency is profiled from the virtual clock (E local epochs on
its whole shard at its speed, plus the model's download and upload at its bandwidth);
devices slower than the time-out Ω are dropped as stragglers. The rest are sorted by
latency and split into m (nearly) equal tiers. Each round one tier is drawn — under the
adaptive policy tiers with lower accuracy are likelier, and every tier has a budget of
⌈R/m⌉ credits — and ``min(K, |tier|)`` of its members train FedAvg on the full model.

Only devices that can train the full model take part (like ExclusiveFL, spec §9.2).
With few eligible devices a tier is small: ~18 eligible devices in 5 tiers train
≤ 4 clients per round (Q8); lower ``--opt tiers=`` to get more.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedbench.api import (
    Assignment,
    ConfigError,
    Method,
    RunContext,
    Stream,
    Update,
    numpy_rng,
    placed_on,
)

log = logging.getLogger(__name__)

POLICIES = ("adaptive", "uniform", "fast")
# Second keys of TiFL's METHOD-stream draws: (round, _TIER_DRAW_KEY) picks a round's tier, (tier,
# _TIER_EVAL_KEY) its evaluation subsample. Two keys each, since keys that differ only by trailing
# zeros share a stream (fedbench.seeding.derive_seed).
_TIER_DRAW_KEY = 0
_TIER_EVAL_KEY = 1


@dataclass(frozen=True, kw_only=True)
class TiFLOptions:
    """``tiers`` m; ``interval`` I (rounds between tier-accuracy updates); ``policy``:
    ``adaptive`` (credits + accuracy-ranked probabilities), ``uniform`` (credits, equal
    probabilities) or ``fast`` (the fastest tier that has credits); ``timeout_s`` Ω
    (devices slower than this are stragglers); ``eval_samples`` per tier for its accuracy."""

    tiers: int = 5
    interval: int = 10
    policy: str = "adaptive"
    timeout_s: float = math.inf
    eval_samples: int = 500

    def __post_init__(self) -> None:
        if self.tiers < 1:
            raise ConfigError(f"tifl option tiers ({self.tiers}) must be >= 1 (TiFL's default is 5)")
        if self.interval < 1:
            raise ConfigError(f"tifl option interval ({self.interval}) must be >= 1 (TiFL's default is 10)")
        if self.policy not in POLICIES:
            raise ConfigError(f"tifl option policy ({self.policy!r}) must be one of {', '.join(POLICIES)}")
        if not self.timeout_s > 0:
            raise ConfigError(f"tifl option timeout_s ({self.timeout_s}) must be > 0 (default: no time-out)")
        if self.eval_samples < 1:
            raise ConfigError(f"tifl option eval_samples ({self.eval_samples}) must be >= 1")


def make_tiers(
    latency_s: Mapping[int, float], num_tiers: int, timeout_s: float = math.inf
) -> list[tuple[int, ...]]:
    """Devices sorted by latency (ties by id), stragglers above ``timeout_s`` dropped, split into
    ``min(num_tiers, devices)`` nearly equal chunks; tier 0 is the fastest."""
    kept = sorted((t, c) for c, t in latency_s.items() if t <= timeout_s)
    if not kept:
        return []
    chunks = np.array_split(np.array([c for _, c in kept], dtype=np.int64), min(num_tiers, len(kept)))
    return [tuple(int(c) for c in chunk) for chunk in chunks]


def credit_probabilities(accuracies: Sequence[float], credits: Sequence[int]) -> np.ndarray:
    """TiFL's adaptive rule (spec §9.4 step 1): among the n tiers with credits, the j-th lowest
    accuracy gets (n − j)/D with D = n(n+1)/2; tiers without credits get 0. Ties keep tier order."""
    probs = np.zeros(len(accuracies))
    live = [t for t in range(len(accuracies)) if credits[t] > 0]
    n = len(live)
    if n == 0:
        return probs
    ranked = sorted(live, key=lambda t: accuracies[t])
    for j, tier in enumerate(ranked):
        probs[tier] = (n - j) / (n * (n + 1) / 2)
    return probs


class TiFL(Method):
    """Pick one latency tier per round; FedAvg on the full model within it."""

    options_type = TiFLOptions
    server_state = ("credits", "probabilities", "accuracies")  # the global model (base) and the tier credits

    def __init__(self, ctx: RunContext, options: TiFLOptions | None = None) -> None:
        super().__init__(ctx, options)
        eligible = ctx.require_eligible(self.global_model)
        self.latency_s = {c: self.device_time(Assignment(c)).total_s for c in eligible}
        self.tiers = make_tiers(self.latency_s, self.options.tiers, self.options.timeout_s)
        if not self.tiers:
            raise ConfigError(
                f"tifl: every eligible device is slower than timeout_s ({self.options.timeout_s} s); "
                "raise --opt timeout_s"
            )
        if len(self.tiers) < self.options.tiers:
            log.warning("tifl: only %d eligible devices, so %d tiers instead of %d",
                        sum(map(len, self.tiers)), len(self.tiers), self.options.tiers)
        ctx.participants.update(c for tier in self.tiers for c in tier)  # the pool is every tiered device
        m = len(self.tiers)
        self.credits = [math.ceil(ctx.config.rounds / m)] * m
        self.probabilities = np.full(m, 1.0 / m)
        self.accuracies = [0.0] * m
        self._eval_indices = [self._tier_eval_indices(t, tier) for t, tier in enumerate(self.tiers)]
        self._round_tier: int | None = None
        self._accuracy_updated = False

    def _tier_eval_indices(self, tier_idx: int, tier: tuple[int, ...]) -> torch.Tensor:
        """A fixed subsample (≤ ``eval_samples``) of the union of the tier's shards (Q18)."""
        union = torch.cat([self.ctx.data.shards[c] for c in tier])
        rng = numpy_rng(self.ctx.config.seed, Stream.METHOD, tier_idx, _TIER_EVAL_KEY)
        take = min(self.options.eval_samples, int(union.numel()))
        return union[torch.as_tensor(np.sort(rng.choice(union.numel(), size=take, replace=False)))]

    @torch.inference_mode()
    def tier_accuracy(self, tier_idx: int) -> float:
        model = self.global_model
        was_training = model.training
        model.eval()
        images, labels = self.ctx.data.dataset.train_batch(self._eval_indices[tier_idx])
        device = self.ctx.config.device
        with placed_on(model, device):
            accuracy = float((model(images.to(device)).argmax(dim=1) == labels.to(device)).float().mean())
        model.train(was_training)
        return accuracy

    def choose_tier(self, round_idx: int) -> int:
        """Steps 1–2 of spec §9.4 for round ``round_idx`` (0-based): maybe update accuracies and
        probabilities, then draw a tier among those with credits and spend one credit."""
        r = round_idx + 1
        self._accuracy_updated = r > 1 and r % self.options.interval == 0
        if self._accuracy_updated:
            self.accuracies = [self.tier_accuracy(t) for t in range(len(self.tiers))]
            if self.options.policy == "adaptive":
                self.probabilities = credit_probabilities(self.accuracies, self.credits)
        live = [t for t in range(len(self.tiers)) if self.credits[t] > 0] or list(range(len(self.tiers)))
        if self.options.policy == "fast":
            tier = live[0]
        else:
            weights = self.probabilities[live] if self.options.policy == "adaptive" else np.ones(len(live))
            if weights.sum() <= 0:
                weights = np.ones(len(live))
            rng = numpy_rng(self.ctx.config.seed, Stream.METHOD, round_idx, _TIER_DRAW_KEY)
            tier = int(live[rng.choice(len(live), p=weights / weights.sum())])
        self.credits[tier] = max(self.credits[tier] - 1, 0)
        return tier

    def assign(self, round_idx: int) -> list[Assignment]:
        self._round_tier = self.choose_tier(round_idx)
        return [Assignment(c) for c in self.ctx.sample_clients(round_idx, self.tiers[self._round_tier])]

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        metrics = {"tifl/tier": float(self._round_tier + 1) if self._round_tier is not None else 0.0}
        if self._accuracy_updated:
            for t, accuracy in enumerate(self.accuracies, start=1):
                metrics[f"tifl/tier{t}/accuracy"] = accuracy
                metrics[f"tifl/tier{t}/probability"] = float(self.probabilities[t - 1])
        return metrics
