"""Committee sortition: expected size, determinism, widening, weights, slack."""

from __future__ import annotations

import hashlib
import math
import statistics

import pytest

from consensus.sortition import (
    CommitteeView,
    SortitionConfig,
    base_scale,
    check_commit,
    committee_target,
    first_round,
    max_round_at,
    selection_probability,
    ticket,
    weight,
)


def key(i: int) -> bytes:
    return hashlib.sha256(f"sortition node {i}".encode()).digest()


def rid(j: int) -> str:
    return hashlib.sha256(f"request {j}".encode()).hexdigest()


def view_of(weights: list[float], target: float = 4.5, **cfg) -> CommitteeView:
    return CommitteeView({key(i).hex(): w for i, w in enumerate(weights)}, target, SortitionConfig(**cfg))


def test_ticket_is_deterministic_uniform_and_depends_on_both_inputs() -> None:
    assert ticket(rid(1), key(1)) == ticket(rid(1), key(1))
    assert ticket(rid(1), key(1)) != ticket(rid(2), key(1))
    assert ticket(rid(1), key(1)) != ticket(rid(1), key(2))
    us = [ticket(rid(j), key(0)) for j in range(4000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert abs(statistics.fmean(us) - 0.5) < 0.02
    with pytest.raises(ValueError):
        ticket(rid(1), b"short")


def test_committee_target_is_quorum_times_factor_within_bounds() -> None:
    assert committee_target(3) == 4.5
    assert committee_target(3, SortitionConfig(committee_factor=2.0)) == 6.0
    assert committee_target(40, SortitionConfig(max_committee=50)) == 50.0
    assert committee_target(3, SortitionConfig(max_committee=2)) == 3.0  # never below quorum
    with pytest.raises(ValueError):
        SortitionConfig(committee_factor=0.5)


@pytest.mark.parametrize(
    "weights", [[1.0] * 1000, [0.05 + (i % 7) for i in range(1000)], [8.0] * 3 + [0.1] * 500]
)
def test_expected_committee_size_is_the_target(weights: list[float]) -> None:
    v = view_of(weights)
    assert sum(v.probability(n, 0) for n in v.weights) == pytest.approx(4.5, rel=1e-9)
    sizes = [len(v.members(rid(j), 0)) for j in range(400)]
    assert abs(statistics.fmean(sizes) - 4.5) < 0.45  # ~4.5 standard errors of the mean


def test_water_filling_caps_heavy_nodes_and_keeps_the_sum() -> None:
    w = [100.0, 100.0, 1.0, 1.0, 1.0, 1.0]
    s = base_scale(w, 4.0)
    assert sum(min(1.0, s * x) for x in w) == pytest.approx(4.0)
    assert min(1.0, s * 100.0) == 1.0 and s * 1.0 == pytest.approx(0.5)
    assert base_scale(w, 6.0) == math.inf
    assert base_scale([0.0, 1.0], 1.0) == math.inf  # zero weights never count


def test_weight_scaling_more_weight_more_selection() -> None:
    weights = [1.0] * 500 + [4.0] * 500
    v = view_of(weights)
    light = sum(len(set(v.members(rid(j), 0)) & {key(i).hex() for i in range(500)}) for j in range(300))
    heavy = sum(len(set(v.members(rid(j), 0)) & {key(i).hex() for i in range(500, 1000)}) for j in range(300))
    assert 3.0 < heavy / light < 5.5
    assert weight(100.0, 1.0) == 8.0  # capacity is capped
    assert weight(2.0, 0.5) == 1.0
    # a fresh identity is credited about one worker whatever it claims
    assert weight(8.0, 0.05) == pytest.approx(0.05 * 1.35)
    assert weight(100.0, 0.05) == weight(8.0, 0.05) < weight(2.0, 0.75) / 10
    with pytest.raises(ValueError):
        weight(1.0, 1.5)
    with pytest.raises(ValueError):
        weight(-1.0, 1.0)


def test_recomputable_by_anyone_from_public_data() -> None:
    weights = [1.0 + i % 3 for i in range(200)]
    a, b = view_of(weights), view_of(list(weights))
    for j in range(20):
        assert a.members(rid(j), 0) == b.members(rid(j), 0)
        for n in a.members(rid(j), 0):
            assert a.selected(rid(j), n, 0)


def test_widening_rounds_are_monotone_and_nested_and_end_with_everyone() -> None:
    v = view_of([1.0] * 300)
    for j in range(30):
        prev: set[str] = set()
        for r in range(v.config.max_rounds + 1):
            cur = set(v.members(rid(j), r))
            assert prev <= cur
            prev = cur
        assert prev == set(v.weights)
    ps = [selection_probability(0.5, 0.01, r) for r in range(10)]
    assert ps == sorted(ps) and ps[-1] == 1.0


def test_first_round_reaches_quorum_in_own_view() -> None:
    v = view_of([1.0] * 300)
    rounds = []
    for j in range(100):
        r = first_round(v, rid(j), 3)
        rounds.append(r)
        assert len(v.members(rid(j), r)) >= 3 + v.config.spare_members
        if r > 0:
            assert len(v.members(rid(j), r - 1)) < 3 + v.config.spare_members
    assert 0 in rounds and max(rounds) >= 1  # an unlucky draw skips to a wider round


def test_max_round_at_opens_one_round_per_round_ms() -> None:
    cfg = SortitionConfig(round_ms=1000, max_rounds=5)
    assert max_round_at(0, 0, 0, cfg) == 1
    assert max_round_at(0, 0, 999, cfg) == 1
    assert max_round_at(0, 0, 2500, cfg) == 3
    assert max_round_at(2, 0, 10**9, cfg) == 5


def test_check_commit_slack_rule() -> None:
    n = 400
    v = view_of([1.0] * n, slack=1.5)
    p = v.probability(key(0).hex(), 0)
    accepted_members = rejected_outsiders = slack_only = 0
    for j in range(300):
        for i in range(n):
            u = ticket(rid(j), key(i))
            verdict = check_commit(
                v, rid(j), key(i), claimed_round=0, claimed_capacity=1.0, standing=1.0, max_round=1
            )
            if u < p:
                accepted_members += verdict.accepted
                assert verdict.accepted  # a real member is always counted
            elif u < 1.5 * p:
                slack_only += verdict.accepted
                assert verdict.accepted  # a committer that saw up to 1/1.5 of our weight
            else:
                assert not verdict.accepted and verdict.reason == "not_in_committee"
                rejected_outsiders += 1
    assert accepted_members > 0 and slack_only > 0 and rejected_outsiders > 0


def test_check_commit_rejects_early_rounds_bad_claims_and_uses_the_verifiers_weight() -> None:
    v = view_of([1.0] * 100)
    args = dict(claimed_capacity=1.0, standing=1.0)
    assert check_commit(v, rid(0), key(1), claimed_round=3, max_round=1, **args).reason == "round_too_early"
    assert check_commit(v, rid(0), key(1), claimed_round=-1, max_round=1, **args).reason == "bad_claim"
    # claiming a huge capacity does not help a known node: the verifier's record caps it
    outsider = next(i for i in range(100) if ticket(rid(0), key(i)) > 0.2)
    big = check_commit(
        v, rid(0), key(outsider), claimed_round=0, max_round=1, claimed_capacity=1e6, standing=1.0
    )
    assert not big.accepted
    # a node the verifier gave zero weight (banned) is never in the committee
    banned = CommitteeView({**v.weights, key(7).hex(): 0.0}, 4.5)
    assert not check_commit(banned, rid(0), key(7), claimed_round=8, max_round=8, **args).accepted
    # at the last round everybody with weight is in
    assert check_commit(v, rid(0), key(outsider), claimed_round=8, max_round=8, **args).accepted
