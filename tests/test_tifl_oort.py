"""TiFL (latency tiers, credits) and Oort (utility bandit, over-commitment) on hand examples and 2 rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedbench import engine
from fedbench.config import make_config
from fedbench.core.method import Assignment
from fedbench.errors import ConfigError
from fedbench.methods.oort import Oort, OortOptions, OortSelector, overcommitted, statistical_utility
from fedbench.methods.tifl import TiFL, credit_probabilities, make_tiers


def config_for(method: str, options: dict | None = None, **extra):
    return make_config(overrides={
        "method": method, "options": options or {},
        "data": {"dataset": "synthetic", "num_clients": 20, "partition": "iid"},
        "train": {"local_epochs": 1, "batch_size": 64, "lr": 0.05}, "model": {"name": "cnn", "width": 0.25},
        "fleet": {"profile": "relative"}, "clients_per_round": 3, "rounds": 2, "eval_every": 2, "tracking": {"enabled": False},
        **extra,
    })


def prepared(method: str, options: dict | None = None, **extra):
    ctx, _ = engine.prepare(config_for(method, options, **extra))
    return ctx, engine.make_method(ctx)


# ---------------------------------------------------------------------------- TiFL
def test_tiers_are_equal_chunks_of_the_devices_sorted_by_latency_without_stragglers():
    latency_s = {0: 5.0, 1: 1.0, 2: 3.0, 3: 2.0, 4: 4.0, 5: 100.0}
    assert make_tiers(latency_s, 2, timeout_s=50.0) == [(1, 3, 2), (4, 0)]
    assert make_tiers(latency_s, 10) == [(1,), (3,), (2,), (4,), (0,), (5,)]  # never an empty tier


def test_credit_rule_gives_the_least_accurate_tier_with_credits_the_largest_probability():
    assert credit_probabilities([0.5, 0.2, 0.9], [2, 2, 2]) == pytest.approx([2 / 6, 3 / 6, 1 / 6])
    assert credit_probabilities([0.5, 0.2, 0.9], [0, 2, 1]) == pytest.approx([0, 2 / 3, 1 / 3])
    assert credit_probabilities([0.5, 0.2], [0, 0]) == pytest.approx([0, 0])


def test_tifl_probabilities_and_credits_follow_a_scripted_sequence_of_accuracies():
    ctx, method = prepared("tifl", {"tiers": 2, "interval": 2}, rounds=4)
    assert isinstance(method, TiFL) and len(method.tiers) == 2
    assert method.credits == [2, 2]  # ⌈R/m⌉ = ⌈4/2⌉
    scripted = iter([[0.8, 0.3], [0.1, 0.6]])  # tier accuracies at rounds 2 and 4
    current: list[float] = []

    def fake_accuracy(tier_idx: int) -> float:
        if tier_idx == 0:
            current[:] = next(scripted)
        return current[tier_idx]

    method.tier_accuracy = fake_accuracy
    history = []
    for round_idx in range(4):
        tier = method.choose_tier(round_idx)
        history.append((tier, list(method.probabilities), list(method.credits)))
    assert history[0][1] == pytest.approx([0.5, 0.5])  # round 1: initial 1/m
    assert history[1][1] == pytest.approx([1 / 3, 2 / 3])  # round 2: tier 2 less accurate → n/D = 2/3
    spent = [2 - c for c in history[-1][2]]
    assert sum(spent) == 4 and all(s <= 2 for s in spent)  # every round spends one credit, none below 0
    credits_before_round4 = [2 - sum(1 for t, _, _ in history[:3] if t == k) for k in range(2)]
    expected = credit_probabilities([0.1, 0.6], credits_before_round4)
    assert history[3][1] == pytest.approx(list(expected))


def test_tifl_trains_one_tier_of_eligible_devices_and_two_runs_agree():
    ctx, method = prepared("tifl", {"tiers": 2})
    fitting = set(ctx.fleet.eligible(ctx.full_model_peak_bytes()))
    assert {c for tier in method.tiers for c in tier} == fitting
    slowest_fast_tier = max(method.latency_s[c] for c in method.tiers[0])
    assert slowest_fast_tier <= min(method.latency_s[c] for c in method.tiers[1])
    results = engine.run_rounds(method)
    again = engine.run_rounds(prepared("tifl", {"tiers": 2})[1])
    assert [r.metrics["train/loss"] for r in results] == [r.metrics["train/loss"] for r in again]
    for round_result in results:
        tier = method.tiers[int(round_result.metrics["tifl/tier"]) - 1]
        assert len(tier) == 2 and round_result.metrics["round/clients"] == 2  # 4 eligible devices, 2 tiers
        assert round_result.metrics["clock/round_s"] == pytest.approx(max(method.latency_s[c] for c in tier))
    assert results[-1].metrics["participation/rate"] == pytest.approx(len(fitting) / 20)


# ---------------------------------------------------------------------------- Oort
def test_statistical_utility_is_sample_count_times_root_mean_squared_loss():
    assert statistical_utility(torch.tensor([1.0, 2.0, 2.0])) == pytest.approx(3 * math.sqrt(3.0))
    assert statistical_utility(torch.zeros(0)) == 0.0


def hand_selector(**options) -> OortSelector:
    selector = OortSelector(OortOptions(round_threshold=50.0, **options))
    for client, (reward, duration) in enumerate([(10.0, 1.0), (20.0, 2.0), (40.0, 8.0), (30.0, 4.0)]):
        selector.register(client, reward, duration)
    for client in range(3):  # client 3 stays unexplored (its prior is its data size, 30)
        a = selector.arms[client]
        selector.update(client, a.reward, a.duration_s, round_no=1)
    return selector


def test_oort_scores_equal_the_spec_formula_computed_by_hand():
    selector = hand_selector()
    assert selector.preferred_duration() == 4.0  # durations [1, 2, 4, 8], index int(4·0.5) = 2
    selector.preferred_duration_s = 4.0
    scores = selector.scores(round_no=2, feasible=[0, 1, 2, 3])
    low, span, bonus = 0.999 * 10, 40 - 0.999 * 10, math.sqrt(0.1 * math.log(2) / 1)  # clip = 40 (0.98 quantile)
    assert scores == pytest.approx({
        0: (10 - low) / span + bonus,
        1: (20 - low) / span + bonus,
        2: ((40 - low) / span + bonus) * (4.0 / 8.0) ** 2,  # slower than T: penalty (T/d)^α, α = 2
    })


def test_oort_exploits_only_clients_above_the_cut_off():
    selector = hand_selector(exploration_factor=0.0, exploration_min=0.0)
    selector.preferred_duration_s = 4.0
    scores = selector.scores(2, [0, 1, 2, 3])
    ranked = sorted(scores, key=scores.get, reverse=True)
    cut_off = 0.7 * scores[ranked[1]]  # n_exploit = 1 → the score at 0-based rank 1
    allowed = {c for c, s in scores.items() if s >= cut_off}
    for seed in range(20):
        selector = hand_selector(exploration_factor=0.0, exploration_min=0.0)
        picked = selector._exploit(scores, 1, np.random.default_rng(seed))
        assert set(picked) <= allowed and len(picked) == 1


def test_oort_exploration_share_decays_geometrically_to_its_minimum():
    selector = OortSelector(OortOptions())
    for client in range(100):
        selector.register(client, 10.0 + client, 1.0 + client)
    rng = np.random.default_rng(0)
    seen = []
    for round_no in range(2, 40):
        picked = selector.select(round_no, 4, list(range(100)), rng)
        assert len(set(picked)) == 4
        seen.append(selector.exploration)
    expected = [max(0.9 * 0.95 ** j, 0.2) for j in range(1, 39)]
    assert seen == pytest.approx(expected)


def test_over_commitment_is_the_ceiling_of_the_exact_product():
    assert [overcommitted(k, 1.1) for k in (1, 10, 20, 50, 100, 200)] == [2, 11, 22, 55, 110, 220]
    assert overcommitted(3, 1.3) == 4 and overcommitted(10, 2.0) == 20


def test_the_pacer_records_one_entry_per_round_so_its_windows_span_w_rounds():
    """A round that exploited nobody counts as 0 ([C-Oort] records the exploited rewards' mean, 0 for
    none): the windows
    compared every W rounds are the last W rounds, not the last W rounds that exploited someone."""
    selector = hand_selector(pacer_step=2)
    exploited = [[], [0], [], [1, 2], [0]]
    for round_no, clients in enumerate(exploited, start=2):
        selector.last_exploited = clients
        selector.pace(round_no)
    assert selector.util_history == pytest.approx([0.0, 10.0, 0.0, 30.0, 10.0])


def test_oort_over_commits_and_trains_the_clients_that_finish_first():
    ctx, method = prepared("oort", {"overcommit": 2.0}, clients_per_round=2)
    assert isinstance(method, Oort)
    fitting = set(ctx.fleet.eligible(ctx.full_model_peak_bytes()))
    kept = [a.client_id for a in method.assign(0)]
    assert len(kept) == 2 and set(kept) <= fitting and len(method._stragglers) == 2
    slowest_kept = max(method.device_time(Assignment(c)).total_s for c in kept)
    assert all(method.device_time(Assignment(c)).total_s >= slowest_kept for c in method._stragglers)


def test_oort_runs_two_rounds_deterministically_among_eligible_devices_and_records_feedback():
    ctx, method = prepared("oort")
    fitting = set(ctx.fleet.eligible(ctx.full_model_peak_bytes()))
    results = engine.run_rounds(method)
    again = engine.run_rounds(prepared("oort")[1])
    assert [r.metrics["train/loss"] for r in results] == [r.metrics["train/loss"] for r in again]
    assert set(method.selector.arms) == fitting
    explored = [c for c, a in method.selector.arms.items() if a.explored]
    assert explored and set(explored) <= fitting
    assert all(method.selector.arms[c].reward > 0 for c in explored)
    assert results[-1].metrics["participation/rate"] == pytest.approx(len(fitting) / 20)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("method, options, message", [
    (TiFL, {"tiers": 0}, r"tifl option tiers \(0\) must be >= 1"),
    (TiFL, {"policy": "fastest"}, r"tifl option policy \('fastest'\) must be one of adaptive, uniform, fast"),
    (Oort, {"exploration_factor": 1.5}, r"oort option exploration_factor \(1.5\) must be in \[0, 1\]"),
    (Oort, {"overcommit": 0.5}, r"oort option overcommit \(0.5\) must be >= 1"),
])
def test_an_option_outside_its_range_is_a_one_line_error(method, options, message):
    with pytest.raises(ConfigError, match=message) as err:
        method.parse_options(options)
    assert "\n" not in str(err.value)
