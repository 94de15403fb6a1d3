"""Oort: guided participant selection (Lai et al., "Oort: Efficient Federated Learning via
Guided Participant Selection", OSDI 2021), as specified in spec baselines.md §10 with the
defaults of the official selector (SymbioticLab/Oort ``oort/oort.py``, ``argParser.py``).

Client selection is a multi-armed bandit. A client's utility is its statistical utility
U_i = n_i · sqrt(mean of its first local epoch's squared per-sample losses) — normalised,
plus a staleness bonus sqrt(0.1·ln t / L_i) — times (T/d_i)^α when its round duration d_i
(virtual clock) exceeds the preferred duration T. Each round a decaying share ε of the
picks explores never-tried clients; the rest exploit the top-utility ones. A pacer relaxes
T when the exploited utility stops growing. ⌈overcommit·K⌉ clients are selected, the K
that would finish first train (FedAvg on the full model); the others are stragglers.
Only devices that can train the full model take part (like ExclusiveFL, spec §10.2).
The server averages like every method (uniform by default, spec common.md §1.4); Oort's own
server weights by data share, which ``--weighting samples`` reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedbench.api import (
    Assignment,
    ClientContext,
    ConfigError,
    LossFn,
    Method,
    RunContext,
    Stream,
    Update,
    earliest,
    graph_reusable,
    numpy_rng,
    training_batch_sizes,
)


@dataclass(frozen=True, kw_only=True)
class OortOptions:
    """The official selector's knobs ([C-Oort] ``argParser.py``); spec §10.6 explains each."""

    exploration_factor: float = 0.9
    exploration_decay: float = 0.95
    exploration_min: float = 0.2
    round_threshold: float = 10.0  # percentile of durations that sets the preferred duration T
    pacer_step: int = 20
    pacer_delta: float = 5.0
    round_penalty: float = 2.0  # α
    clip_bound: float = 0.98
    cut_off_util: float = 0.7
    sample_window: float = 5.0
    blacklist_rounds: int = -1  # −1: no blacklist
    blacklist_max_len: float = 0.3
    overcommit: float = 1.1

    def __post_init__(self) -> None:
        for name in ("exploration_factor", "exploration_decay", "exploration_min", "clip_bound",
                     "cut_off_util", "blacklist_max_len"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"oort option {name} ({value}) must be in [0, 1]")
        checks = (
            (0 <= self.round_threshold <= 100, "round_threshold", "in [0, 100] (a percentile)"),
            (self.pacer_step >= 1, "pacer_step", ">= 1"),
            (self.pacer_delta >= 0, "pacer_delta", ">= 0"),
            (self.round_penalty >= 0, "round_penalty", ">= 0"),
            (self.sample_window >= 1, "sample_window", ">= 1"),
            (self.blacklist_rounds >= -1, "blacklist_rounds", ">= -1 (-1 disables the blacklist)"),
            (self.overcommit >= 1, "overcommit", ">= 1 (1.1 selects 10 % more clients than train)"),
        )
        for ok, name, rule in checks:
            if not ok:
                raise ConfigError(f"oort option {name} ({getattr(self, name)}) must be {rule}")


@dataclass
class Arm:
    """What the selector knows about one client."""

    reward: float  # statistical utility (data size before the first report)
    duration_s: float
    time_stamp: int = 0  # round (1-based) of the last report
    count: int = 0
    explored: bool = False


def statistical_utility(losses: torch.Tensor) -> float:
    """U = n · sqrt(mean loss²) over the n per-sample losses of the first local epoch (spec §10.3)."""
    n = int(losses.numel())
    return 0.0 if n == 0 else n * math.sqrt(float((losses.double() ** 2).mean()))


def trained_per_epoch(shard: int, batch_size: int) -> int:
    """Samples one local epoch trains: a last batch of one sample is not (spec common.md §1.3)."""
    return sum(training_batch_sizes(shard, batch_size))


class PerSampleLosses:
    """The per-sample training losses of every local step, in order, in one buffer on the training
    device, written at a cursor that lives there too: no Python state changes per batch, so the
    loss that records them can be replayed from a CUDA graph. One recorder serves every client
    (:meth:`start` zeroes the cursor in place), sized for the largest shard, so the graph of one
    client's step serves the next. The first epoch's losses are the first ``first_epoch_samples``."""

    def __init__(self, largest_shard: int, batch_size: int, epochs: int) -> None:
        self.batch_size = batch_size
        self.capacity = epochs * trained_per_epoch(largest_shard, batch_size)
        self.first_epoch_samples = 0
        self.buffer: torch.Tensor | None = None
        self.cursor: torch.Tensor | None = None

    def start(self, shard: int) -> None:
        """Record the next client's training, over a shard of ``shard`` samples."""
        self.first_epoch_samples = trained_per_epoch(shard, self.batch_size)
        if self.cursor is not None:
            self.cursor.zero_()

    def add(self, per_sample: torch.Tensor) -> None:
        if self.buffer is None:
            self.buffer = per_sample.new_zeros(self.capacity)
            self.cursor = torch.zeros((), dtype=torch.long, device=per_sample.device)
        at = self.cursor + torch.arange(per_sample.shape[0], device=per_sample.device)
        self.buffer.index_copy_(0, at, per_sample.detach())
        self.cursor.add_(per_sample.shape[0])

    def first_epoch(self) -> torch.Tensor:
        return torch.zeros(0) if self.buffer is None else self.buffer[: self.first_epoch_samples]


def overcommitted(k: int, factor: float) -> int:
    """⌈factor · k⌉, the clients Oort starts for k results. The product is rounded first, since in
    floating point 1.1 · 50 is a little above 55, whose ceiling would start a 56th client."""
    return math.ceil(round(factor * k, 9))


@dataclass
class OortSelector:
    """The bandit selector of [C-Oort] ``getTopK`` (spec §10.4); ``rounds`` are 1-based."""

    options: OortOptions
    arms: dict[int, Arm] = field(default_factory=dict)
    exploration: float = field(init=False)
    exploration_min: float = field(init=False)
    round_threshold: float = field(init=False)
    preferred_duration_s: float = math.inf
    util_history: list[float] = field(default_factory=list)
    last_exploited: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.exploration = self.options.exploration_factor
        self.exploration_min = self.options.exploration_min
        self.round_threshold = self.options.round_threshold

    def register(self, client_id: int, prior_reward: float, duration_s: float) -> None:
        self.arms[client_id] = Arm(float(prior_reward), float(duration_s))

    def update(self, client_id: int, reward: float, duration_s: float, round_no: int) -> None:
        arm = self.arms[client_id]
        arm.reward, arm.duration_s, arm.time_stamp = float(reward), float(duration_s), round_no
        arm.count += 1
        arm.explored = True

    # ------------------------------------------------------------ pieces
    def pace(self, round_no: int) -> None:
        """Step 1: record last round's exploited utility; every W rounds move the threshold."""
        # One entry per call: the mean reward of the round's exploited clients ([C-Oort]'s
        # calculateSumUtil returns a mean despite its name), 0 for a round that exploited nobody,
        # so the two windows compared below span W rounds each.
        exploited = [self.arms[c].reward for c in self.last_exploited]
        self.util_history.append(float(np.mean(exploited)) if exploited else 0.0)
        w, delta = self.options.pacer_step, self.options.pacer_delta
        if round_no >= 2 * w and round_no % w == 0:
            previous, current = sum(self.util_history[-2 * w:-w]), sum(self.util_history[-w:])
            if abs(current - previous) <= 0.1 * previous:
                self.round_threshold = min(100.0, self.round_threshold + delta)
            elif abs(current - previous) >= 5 * previous:
                self.round_threshold = max(delta, self.round_threshold - delta)

    def preferred_duration(self) -> float:
        """Step 2: the ``round_threshold``-th percentile of all registered durations ([C-Oort] index rule)."""
        if self.round_threshold >= 100 or not self.arms:
            return math.inf
        durations = sorted(a.duration_s for a in self.arms.values())
        return durations[min(int(len(durations) * self.round_threshold / 100.0), len(durations) - 1)]

    def blacklist(self) -> set[int]:
        """Step 9: clients picked more than ``blacklist_rounds`` times, the most-picked first, capped."""
        if self.options.blacklist_rounds < 0:
            return set()
        over = sorted((c for c, a in self.arms.items() if a.count > self.options.blacklist_rounds),
                      key=lambda c: (-self.arms[c].count, c))
        return set(over[: int(self.options.blacklist_max_len * len(self.arms))])

    def scores(self, round_no: int, feasible: Sequence[int]) -> dict[int, float]:
        """Steps 3–4: normalised, clipped utility + staleness bonus, duration penalty; explored clients."""
        rewards = sorted(self.arms[c].reward for c in feasible if self.arms[c].reward > 0)
        if not rewards:
            return {}
        clip = rewards[min(int(len(rewards) * self.options.clip_bound), len(rewards) - 1)]
        low = 0.999 * rewards[0]
        span = max(rewards[-1] - low, 1e-4)
        scores = {}
        for c in feasible:
            arm = self.arms[c]
            if not arm.explored:
                continue
            score = (min(arm.reward, clip) - low) / span + math.sqrt(0.1 * math.log(round_no) / arm.time_stamp)
            if arm.duration_s > self.preferred_duration_s:
                score *= (self.preferred_duration_s / arm.duration_s) ** self.options.round_penalty
            scores[c] = score
        return scores

    # ------------------------------------------------------------ select
    def select(self, round_no: int, n: int, feasible: Sequence[int], rng: np.random.Generator) -> list[int]:
        """``n`` clients for round ``round_no``; round 1 is uniform random."""
        banned = self.blacklist()
        pool = sorted(c for c in feasible if c not in banned) or sorted(feasible)
        n = min(n, len(pool))
        if round_no <= 1:
            self.last_exploited = []
            return sorted(int(c) for c in rng.choice(pool, size=n, replace=False))
        self.pace(round_no)
        self.preferred_duration_s = self.preferred_duration()
        scores = self.scores(round_no, pool)
        self.exploration = max(self.exploration * self.options.exploration_decay, self.exploration_min)
        picked = self._exploit(scores, n, rng)
        self.last_exploited = list(picked)
        picked += self._explore([c for c in pool if not self.arms[c].explored], n - len(picked), rng)
        rest = [c for c in pool if c not in set(picked)]
        if len(picked) < n:  # step 8: fill up uniformly
            picked += [int(c) for c in rng.choice(rest, size=n - len(picked), replace=False)]
        return sorted(picked)

    def _exploit(self, scores: dict[int, float], n: int, rng: np.random.Generator) -> list[int]:
        take = min(int(n * (1.0 - self.exploration)), len(scores))
        if take <= 0:
            return []
        ranked = sorted(scores, key=lambda c: (-scores[c], c))
        cut_off = self.options.cut_off_util * scores[ranked[min(take, len(ranked) - 1)]]
        candidates = [c for c in ranked if scores[c] >= cut_off]
        if len(candidates) < take:  # only with non-positive scores (a client whose losses were all 0)
            candidates = ranked[:take]
        return _draw(candidates, [scores[c] for c in candidates], take, rng)

    def _explore(self, unexplored: list[int], room: int, rng: np.random.Generator) -> list[int]:
        if not unexplored:
            self.exploration = self.exploration_min = 0.0  # nothing left to explore
            return []
        take = min(len(unexplored), room)
        if take <= 0:
            return []
        init = {}
        for c in unexplored:
            arm = self.arms[c]
            init[c] = arm.reward
            if arm.duration_s > self.preferred_duration_s:
                init[c] *= (self.preferred_duration_s / arm.duration_s) ** self.options.round_penalty
        ranked = sorted(init, key=lambda c: (-init[c], c))[: max(int(self.options.sample_window * take), take)]
        return _draw(ranked, [init[c] for c in ranked], take, rng)


def _draw(candidates: list[int], weights: list[float], take: int, rng: np.random.Generator) -> list[int]:
    """``take`` of ``candidates`` without replacement, with probability ∝ ``weights`` (uniform if all 0)."""
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    p = w / w.sum() if np.count_nonzero(w) >= take else None
    return [int(candidates[i]) for i in rng.choice(len(candidates), size=take, replace=False, p=p)]


class Oort(Method):
    """FedAvg on the full model with Oort's utility-guided selection among devices that fit it."""

    options_type = OortOptions
    server_state = ("selector",)  # the global model (base) and the bandit's arms and pacer

    def __init__(self, ctx: RunContext, options: OortOptions | None = None) -> None:
        super().__init__(ctx, options)
        self.eligible_ids = ctx.require_eligible(self.global_model)
        ctx.participants.update(self.eligible_ids)  # Oort's feasible_clients = E
        self.selector = OortSelector(self.options)
        sizes = ctx.data.shard_sizes()
        for c in self.eligible_ids:  # prior: data size, duration from the clock's profile
            self.selector.register(c, float(sizes[c]), self.device_time(Assignment(c)).total_s)
        self._stragglers: list[int] = []  # this round's over-committed clients that were dropped
        self._recorder: tuple[LossFn, PerSampleLosses] | None = None  # _recording's, made once

    def assign(self, round_idx: int) -> list[Assignment]:
        k = self.ctx.config.clients_per_round
        n = min(overcommitted(k, self.options.overcommit), len(self.eligible_ids))
        rng = numpy_rng(self.ctx.config.seed, Stream.METHOD, round_idx)
        chosen = self.selector.select(round_idx + 1, n, self.eligible_ids, rng)
        # Round times come from a few device classes, so equal shards tie exactly: a random order
        # decides which of them over-commitment drops, rather than always the highest id.
        times = [self.device_time(Assignment(chosen[i])) for i in rng.permutation(len(chosen))]
        kept = sorted(t.client_id for t in earliest(times, k))
        self._stragglers = [c for c in chosen if c not in set(kept)]
        return [Assignment(c) for c in kept]

    def local_update(self, client: ClientContext) -> Update:
        """FedAvg's local update, recording the per-sample losses of the first local epoch through
        the loss: the statistical utility the client reports."""
        loss, recorded = self._recording()
        recorded.start(int(self.ctx.data.shards[client.client_id].numel()))
        model = self.worker_model()
        model.load_state_dict(self.global_model.state_dict())
        update = self.train_client(model, client, loss_fn=loss)
        update.extra["utility"] = statistical_utility(recorded.first_epoch())
        return update

    def _recording(self) -> tuple[LossFn, PerSampleLosses]:
        """The loss that records per-sample losses, and its recorder, made once for the run: the
        same function over the same tensors for every client, so one CUDA graph capture serves
        them all (:func:`graph_reusable`)."""
        if self._recorder is None:
            train = self.ctx.config.train
            recorded = PerSampleLosses(max(self.ctx.data.shard_sizes()), train.batch_size, train.local_epochs)

            @graph_reusable
            def loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
                per_sample = F.cross_entropy(model(images), labels, reduction="none")
                recorded.add(per_sample)
                return per_sample.mean()

            self._recorder = (loss, recorded)
        return self._recorder

    def aggregate(self, round_idx: int, updates: Sequence[Update]) -> None:
        """Feedback (spec §10.3), then FedAvg. Stragglers get the data-share-weighted mean utility."""
        round_no = round_idx + 1
        for u in updates:
            duration = self.device_time(Assignment(u.client_id, u.work), u).total_s
            self.selector.update(u.client_id, u.extra["utility"], duration, round_no)
        if updates:
            total = sum(u.num_samples for u in updates)
            mean_utility = sum(u.num_samples * u.extra["utility"] for u in updates) / max(total, 1)
            for c in self._stragglers:
                self.selector.update(c, mean_utility, self.device_time(Assignment(c)).total_s, round_no)
        super().aggregate(round_idx, updates)

    def round_metrics(self, round_idx: int, updates: Sequence[Update]) -> dict[str, float]:
        s = self.selector
        return {
            "oort/exploration": s.exploration,
            "oort/round_threshold": s.round_threshold,
            "oort/preferred_duration_s": s.preferred_duration_s if math.isfinite(s.preferred_duration_s) else -1.0,
            "oort/stragglers": float(len(self._stragglers)),
            "oort/explored": float(sum(a.explored for a in s.arms.values())),
        }
