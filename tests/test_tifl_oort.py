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


# ---------------------------------------------------------------------------- audit: spec §9–§10 by hand
def test_oort_clips_utilities_above_the_clip_quantile_before_normalising():
    """Spec §10.4 step 3 clips at the ``clip_bound`` quantile of the rewards before normalising; the
    hand example of the existing score test never reaches the clip (its quantile is the max). With
    60 clients at the default 0.98 the quantile is the 59th of 60 sorted rewards, so the best client
    scores exactly like the second best, while min and range still use the unclipped rewards."""
    selector = OortSelector(OortOptions())
    for client in range(60):  # rewards 1..60, all reported in round 1
        selector.register(client, 1.0, 1.0)
        selector.update(client, float(client + 1), 1.0, round_no=1)
    scores = selector.scores(round_no=3, feasible=list(range(60)))
    clip = 59.0  # sorted rewards [1..60], index int(60 · 0.98) = int(58.8) = 58 → 59
    low, span, bonus = 0.999 * 1.0, 60.0 - 0.999, math.sqrt(0.1 * math.log(3) / 1)
    expected = {c: (min(c + 1.0, clip) - low) / span + bonus for c in range(60)}
    assert scores == pytest.approx(expected, rel=1e-12, abs=0)
    assert scores[59] == pytest.approx(scores[58], rel=1e-12) and scores[59] < (60.0 - low) / span + bonus


def test_oort_scores_use_last_report_round_staleness_and_normalise_over_unexplored_priors():
    """A hand case at round t = 4 that tells the spec's formula (§10.4 steps 3–4) from near misses:
    the bonus is sqrt(0.1·ln t / L_i) with L_i the round of the last report (client 2 reported twice,
    so count ≠ L_i, and t − L_i runs the other way); the normalisation set is every feasible client
    with reward > 0, so the unexplored client's prior 4, below the explored minimum 10, sets min_r
    while the explored client whose losses were all 0 (reward 0) is scored but not normalised over;
    and the 0.7 quantile (40) clips client 3's 100 while the range still uses 100."""
    selector = OortSelector(OortOptions(clip_bound=0.7))
    for client, prior in enumerate([50.0, 50.0, 50.0, 50.0, 4.0, 50.0]):
        selector.register(client, prior, 1.0)
    reports = [(0, 10.0, 1), (1, 20.0, 2), (2, 30.0, 1), (2, 40.0, 3), (3, 100.0, 1), (5, 0.0, 3)]
    for client, reward, round_no in reports:  # (client, utility, round it was reported in)
        selector.update(client, reward, 1.0, round_no)
    assert [selector.arms[c].count for c in (0, 1, 2, 3)] == [1, 1, 2, 1]
    scores = selector.scores(round_no=4, feasible=list(range(6)))
    # rewards > 0 over the feasible set: [4 (client 4's prior), 10, 20, 40, 100]; clip index int(5·0.7) = 3
    clip, low = 40.0, 0.999 * 4.0
    span = 100.0 - low

    def bonus(last_round: int) -> float:
        return math.sqrt(0.1 * math.log(4) / last_round)

    expected = {
        0: (10.0 - low) / span + bonus(1),
        1: (20.0 - low) / span + bonus(2),
        2: (40.0 - low) / span + bonus(3),
        3: (clip - low) / span + bonus(1),
        5: (0.0 - low) / span + bonus(3),
    }
    assert scores == pytest.approx(expected, rel=1e-12, abs=0)  # client 4 is unexplored: not scored


def _pacer_selector(**options) -> OortSelector:
    """20 clients, client c with reward c + 1 and duration c + 1 s, all reported in round 1, so the
    threshold-th percentile of durations is durations[int(20 · threshold / 100)] = that index + 1 s."""
    selector = OortSelector(OortOptions(**options))
    for client in range(20):
        selector.register(client, float(client + 1), float(client + 1))
        selector.update(client, float(client + 1), float(client + 1), round_no=1)
    return selector


def test_oort_pacer_raises_the_threshold_on_flat_utility_lowers_it_on_a_jump_and_caps_it_at_100():
    """Spec §10.4 steps 1–2 with W = 2, Δ = 5, starting at 90: every W-th round from 2W on, the sum of
    the last W rounds' mean exploited utility is compared with the W rounds before (round 1 exploited
    nobody: 0). |now − prev| ≤ 0.1·prev (equality included, a fall too) → +Δ, capped at 100, where T
    becomes ∞; |now − prev| ≥ 5·prev (equality included) → −Δ; in between, and in other rounds, no
    change. The utility of each round is set by choosing which clients it exploited (reward c + 1)."""
    selector = _pacer_selector(pacer_step=2, pacer_delta=5.0, round_threshold=90.0)
    exploited = {2: [4], 3: [1], 4: [2], 5: [3], 6: [0, 1], 7: [1], 8: [2], 9: [0], 10: [0], 11: [5],
                 12: [5], 13: [], 14: []}  # mean rewards 5, 2, 3, 4, 1.5, 2, 3, 1, 1, 6, 6, 0, 0
    expected = {  # round: (round_threshold, T) after that round's selection
        2: (90.0, 19.0), 3: (90.0, 19.0),  # T = durations[int(20 · 0.9)] = durations[18]
        4: (95.0, 20.0),  # prev 0 + 5, now 2 + 3 = 5: |0| ≤ 0.5 → +5; T = durations[19]
        5: (95.0, 20.0),
        6: (100.0, math.inf),  # prev 2 + 3 = 5, now 4 + 1.5 = 5.5: |0.5| ≤ 0.5 → +5 = 100: T = ∞
        7: (100.0, math.inf),
        8: (100.0, math.inf),  # prev 5.5, now 5: |−0.5| ≤ 0.55 → +5, capped at 100
        9: (100.0, math.inf),
        10: (100.0, math.inf),  # prev 5, now 2: 0.5 < 3 < 25 → unchanged
        11: (100.0, math.inf),
        12: (95.0, 20.0),  # prev 2, now 12: |10| ≥ 10 → −5
        13: (95.0, 20.0),
        14: (95.0, 20.0),  # prev 12, now 0: 1.2 < 12 < 60 → unchanged
    }
    rng = np.random.default_rng(0)
    selector.select(1, 4, list(range(20)), rng)
    assert selector.round_threshold == 90.0 and selector.util_history == []  # round 1: no pacer
    for round_no in range(2, 15):
        selector.last_exploited = exploited[round_no]
        selector.select(round_no, 4, list(range(20)), rng)
        assert (selector.round_threshold, selector.preferred_duration_s) == expected[round_no], round_no
    assert selector.util_history == pytest.approx([5, 2, 3, 4, 1.5, 2, 3, 1, 1, 6, 6, 0, 0])


def test_oort_pacer_never_lowers_the_threshold_below_one_step():
    """The −Δ branch is max(Δ, threshold − Δ) (spec §10.4 step 1): from 7 with Δ = 5 a jump gives 5,
    not 2. With W = 1 round 2 compares its utility 5 with round 1's 0 (|5| ≥ 0); round 3 then sees
    5 vs 5 and raises it by Δ."""
    selector = _pacer_selector(pacer_step=1, pacer_delta=5.0, round_threshold=7.0)
    rng = np.random.default_rng(0)
    selector.select(1, 4, list(range(20)), rng)
    selector.last_exploited = [4]  # utility 5
    selector.select(2, 4, list(range(20)), rng)
    assert (selector.round_threshold, selector.preferred_duration_s) == (5.0, 2.0)  # durations[int(20·0.05)]
    selector.last_exploited = [4]
    selector.select(3, 4, list(range(20)), rng)
    assert (selector.round_threshold, selector.preferred_duration_s) == (10.0, 3.0)  # durations[2]


def test_oort_utility_is_computed_on_the_first_local_epoch_and_stragglers_get_the_data_weighted_mean(monkeypatch):
    """Spec §10.3 in a real run with 2 local epochs: a trained client reports
    U = n · sqrt(mean of its first epoch's n squared per-sample losses), n = its shard (no batch of one
    sample here), not all 2n losses it computed; the over-committed stragglers get the mean utility of
    the round's trained clients weighted by their shard sizes (unequal under the Dirichlet split),
    with the current round as time stamp and their clock duration. The losses are caught as the
    loss hook hands them to the recorder, so the oracle is independent of the recorder's buffer."""
    from fedbench.methods import oort as oort_module

    losses: list[torch.Tensor] = []
    by_client: dict[tuple[int, int], torch.Tensor] = {}
    real_add, real_local_update = oort_module.PerSampleLosses.add, Oort.local_update

    def spy_add(self, per_sample: torch.Tensor) -> None:
        losses.append(per_sample.detach().double().cpu().clone())
        real_add(self, per_sample)

    def spy_local_update(self, client):
        losses.clear()
        update = real_local_update(self, client)
        by_client[(client.round_idx + 1, update.client_id)] = torch.cat(losses)
        return update

    monkeypatch.setattr(oort_module.PerSampleLosses, "add", spy_add)
    monkeypatch.setattr(Oort, "local_update", spy_local_update)
    ctx, method = prepared(
        "oort", {"overcommit": 2.0}, clients_per_round=2,
        data={"dataset": "synthetic", "num_clients": 20, "partition": "dirichlet"},
        train={"local_epochs": 2, "batch_size": 64, "lr": 0.05},
    )
    snapshots = []

    def on_round(result) -> None:
        arms = {c: (a.reward, a.time_stamp, a.count, a.explored, a.duration_s) for c, a in method.selector.arms.items()}
        snapshots.append((list(method._stragglers), arms))

    engine.run_rounds(method, on_round=on_round)
    shard = {c: int(ctx.data.shards[c].numel()) for c in method.eligible_ids}
    assert len(set(shard.values())) > 1  # unequal shares: a weighted mean differs from a plain one
    counts = dict.fromkeys(method.eligible_ids, 0)
    for round_no, (stragglers, arms) in enumerate(snapshots, start=1):
        trained = sorted(c for r, c in by_client if r == round_no)
        for c in trained + stragglers:
            counts[c] += 1
        assert {c: arms[c][2] for c in counts} == counts  # trained clients and stragglers count once per round
        assert len(trained) == 2 and len(stragglers) == 2 and not set(trained) & set(stragglers)
        utility = {}
        for c in trained:
            recorded = by_client[(round_no, c)]
            n = shard[c] - (1 if shard[c] % 64 == 1 else 0)
            assert n == shard[c] and recorded.numel() == 2 * n  # both epochs computed, the first one counts
            utility[c] = n * math.sqrt(float((recorded[:n] ** 2).mean()))
            assert arms[c][0] == pytest.approx(utility[c], rel=1e-9)
            assert arms[c][0] != pytest.approx(2 * n * math.sqrt(float((recorded ** 2).mean())), rel=1e-3)
            assert arms[c][1] == round_no
        weighted = sum(shard[c] * utility[c] for c in trained) / sum(shard[c] for c in trained)
        assert weighted != pytest.approx(sum(utility.values()) / 2, rel=1e-6)
        for c in stragglers:
            reward, time_stamp, _, explored, duration_s = arms[c]
            assert reward == pytest.approx(weighted, rel=1e-9) and time_stamp == round_no and explored
            assert duration_s == method.device_time(Assignment(c)).total_s


def test_oort_first_round_is_uniform_over_the_feasible_clients_without_exploiting():
    """Spec §10.4: round 1 is uniform random among the feasible clients — not weighted by the prior
    (client 0's prior is 1000× the others') and without the pacer or the exploration decay."""
    selector = OortSelector(OortOptions())
    for client in range(10):
        selector.register(client, 1000.0 if client == 0 else 1.0, 1.0 + client)
    feasible = [0, 2, 4, 6, 8]
    counts = dict.fromkeys(feasible, 0)
    for seed in range(2000):
        picked = selector.select(1, 2, feasible, np.random.default_rng(seed))
        assert len(set(picked)) == 2 and set(picked) <= set(feasible)
        assert selector.last_exploited == []
        for c in picked:
            counts[c] += 1
    assert selector.exploration == 0.9 and selector.util_history == []
    assert all(abs(count / 2000 - 2 / 5) < 0.05 for count in counts.values()), counts


def _half_explored_selector() -> OortSelector:
    """10 clients; 0–7 reported in round 1 with very unequal utilities, 8 and 9 never tried."""
    selector = OortSelector(OortOptions())
    for client in range(10):
        selector.register(client, 5.0, 1.0)
    for client in range(8):
        selector.update(client, 1000.0 if client == 0 else 1.0 + client, 1.0, round_no=1)
    return selector


def test_oort_fills_up_uniformly_when_exploit_and_explore_pick_fewer_than_asked():
    """Spec §10.4 steps 5–8 at round 2 with n = 4: ε = 0.9·0.95 = 0.855, n_exploit = ⌊4·0.145⌋ = 0,
    n_explore = min(2 unexplored, 4) = 2, so both never-tried clients are picked and the other 2 are
    filled up uniformly from the rest — each explored client with probability 2/8, whatever its score
    (client 0's utility is 1000)."""
    counts = dict.fromkeys(range(8), 0)
    for seed in range(2000):
        selector = _half_explored_selector()
        picked = selector.select(2, 4, list(range(10)), np.random.default_rng(seed))
        assert selector.exploration == pytest.approx(0.855) and selector.last_exploited == []
        assert len(set(picked)) == 4 and {8, 9} <= set(picked)
        for c in set(picked) - {8, 9}:
            counts[c] += 1
    assert all(abs(count / 2000 - 2 / 8) < 0.04 for count in counts.values()), counts


def test_oort_stops_exploring_once_every_client_has_been_explored():
    """Spec §10.4 step 7: when no unexplored client is left, ε = ε_min = 0, so from the next round on
    every pick is exploited (n_exploit = ⌊n·(1 − 0)⌋ = n)."""
    selector = _half_explored_selector()
    rng = np.random.default_rng(0)
    selector.select(2, 4, list(range(10)), rng)
    for client in (8, 9):
        selector.update(client, 3.0, 1.0, round_no=2)
    assert (selector.exploration, selector.exploration_min) == (pytest.approx(0.855), 0.2)
    selector.select(3, 4, list(range(10)), rng)  # ε decays to 0.812, exploits ⌊4·0.188⌋ = 0, none to explore
    assert (selector.exploration, selector.exploration_min) == (0.0, 0.0)
    assert selector.last_exploited == []
    for round_no in (4, 5):
        picked = selector.select(round_no, 4, list(range(10)), rng)
        assert selector.exploration == 0.0 and sorted(selector.last_exploited) == picked and len(picked) == 4


# ---------------------------------------------------------------------------- audit: TiFL
def test_tifl_measures_each_tier_accuracy_with_the_global_model_on_a_fixed_subset_of_its_pooled_shards():
    """Decision Q18 in a real run (no stand-in for the measurement): with I = 1, in rounds 2 and 3
    the global model (as the previous round left it) is evaluated on a fixed subsample of
    eval_samples = 50 of the union of each tier's shards; the logged accuracies are recomputed here
    from snapshots of the model, and the subsample is the same at both updates."""
    import copy

    ctx, method = prepared("tifl", {"tiers": 2, "interval": 1, "eval_samples": 50}, rounds=3, eval_every=3)
    fixed = [indices.clone() for indices in method._eval_indices]
    for tier, indices in zip(method.tiers, fixed, strict=True):
        union = set(torch.cat([ctx.data.shards[c] for c in tier]).tolist())
        assert len(union) > 50 and indices.numel() == 50
        assert len(set(indices.tolist())) == 50 and set(indices.tolist()) <= union
    models = {}
    results = engine.run_rounds(method, on_round=lambda r: models.__setitem__(r.round_idx, copy.deepcopy(method.global_model)))
    for round_idx, result in enumerate(results):
        logged = [result.metrics.get(f"tifl/tier{t}/accuracy") for t in (1, 2)]
        if round_idx == 0:  # r > 1 only
            assert logged == [None, None]
            continue
        model = models[round_idx - 1].eval()  # the global model before this round trained
        for t, indices in enumerate(fixed):
            images, labels = ctx.data.dataset.train_batch(indices)
            with torch.no_grad():
                accuracy = float((model(images).argmax(dim=1) == labels).float().mean())
            assert logged[t] == pytest.approx(accuracy, abs=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(method._eval_indices, fixed, strict=True))


def test_tifl_draws_min_k_tier_size_clients_of_the_tier_without_replacement():
    """Spec §9.4 step 3 / §9.5: K = 3 of a tier of 4 are drawn without replacement (distinct
    clients, all of the tier), and over rounds every member — and every 3-subset — gets a turn."""
    ctx, method = prepared("tifl", {"tiers": 1, "interval": 1000}, clients_per_round=3)
    (tier,) = method.tiers
    assert len(tier) == 4
    subsets = set()
    for round_idx in range(40):
        picked = [a.client_id for a in method.assign(round_idx)]
        assert len(picked) == len(set(picked)) == 3 and set(picked) <= set(tier)
        subsets.add(tuple(sorted(picked)))
    assert len(subsets) == 4


def test_tifl_fast_policy_takes_the_fastest_tier_that_still_has_credits():
    """docs/clock.md: ``fast`` = the fastest tier with credits. R = 4, m = 2: credits ⌈4/2⌉ = 2 each,
    so tier 1 (fastest) twice, then tier 2 twice."""
    ctx, method = prepared("tifl", {"tiers": 2, "policy": "fast", "interval": 1000}, rounds=4)
    assert [method.choose_tier(r) for r in range(4)] == [0, 0, 1, 1]
    assert method.credits == [0, 0]


def test_tifl_uniform_policy_draws_tiers_with_credits_with_equal_probability():
    """docs/clock.md: ``uniform`` = equal probabilities among tiers with credits, kept equal when the
    accuracies are measured. R = 200, m = 2: 100 credits each, so over the first 100 rounds (no tier can
    run out) each tier is drawn about half the time, and over all 200 exactly 100 times each."""
    ctx, method = prepared("tifl", {"tiers": 2, "policy": "uniform", "interval": 50}, rounds=200, eval_every=200)
    tiers = [method.choose_tier(r) for r in range(200)]
    assert 35 <= tiers[:100].count(0) <= 65
    assert tiers.count(0) == tiers.count(1) == 100
    assert "tifl/tier1/accuracy" in method.round_metrics(199, [])  # round 200: accuracies were measured
    assert list(method.probabilities) == [0.5, 0.5]
