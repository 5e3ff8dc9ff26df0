"""Quorum state machine: protocol runs on an in-memory network, plus properties."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import (
    CommitRef,
    CommitRefused,
    Finished,
    PublishRejection,
    PublishResult,
    PublishReveal,
    PublishRevealRequest,
    QuorumConfig,
    QuorumMachine,
    RecheckVerdict,
    Reputation,
    RequestRecheck,
    SecurityParams,
    binary_embedding,
    inference_id_for,
    make_commit,
)
from tests.consensus.sim import ACCEPTED, HASH_A, HASH_B, MODEL, REQUEST_ID, Node, Sim, passes_if, pubkey

# commit window: explicit 5 s (commits close at 5_000, count on arrival until 5_500)
PARAMS = SecurityParams(
    quorum=5,
    max_time_ms=30_000,
    sec_distance=0.1,
    sec_percentage=0.6,
    accepted_models=ACCEPTED,
    commit_window_ms=5_000,
)
CONFIG = QuorumConfig(
    reveal_request_grace_ms=300, commit_grace_ms=500, reveal_window_ms=5_000, consensus_window_ms=5_000
)
P3 = SecurityParams(
    quorum=3,
    max_time_ms=30_000,
    sec_distance=0.1,
    sec_percentage=0.6,
    accepted_models=ACCEPTED,
    commit_window_ms=5_000,
)
CLOSE, OPEN = 5_000, 5_500
HONEST = passes_if(lambda t: t.startswith("honest"))


def embed(text: str) -> np.ndarray:
    """Synthetic embedding: texts starting with 'honest' lie near one direction."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    rng = np.random.default_rng(seed)
    if text.startswith("honest"):
        return np.random.default_rng(0).normal(size=64) + rng.normal(scale=0.05, size=64)
    return rng.normal(size=64)


def honest_nodes(n: int, start: int = 0) -> list[Node]:
    return [Node(pubkey(start + k), f"honest answer {k} " + "word " * 20, 1_000 + 37 * k) for k in range(n)]


def outcome(sim: Sim) -> set[tuple[str, str | None]]:
    """(state, output) over the honest nodes and observers (a liar's own view is moot)."""
    return {
        (n.machine.state, n.results[0].output if n.results else None)
        for n in sim.nodes
        if n.output is None or n.output.startswith("honest answer")
    }


def test_all_honest_succeed_and_agree() -> None:
    nodes = honest_nodes(5) + [Node(pubkey(99), None)]  # plus one observer
    sim = Sim(nodes, embed, PARAMS, CONFIG, truth=HONEST)
    sim.run()
    states = outcome(sim)
    assert len(states) == 1
    state, output = states.pop()
    assert state == "succeeded" and output.startswith("honest")
    for n in nodes:
        assert n.machine.reveal_statuses() == {k.key.hex(): "accepted" for k in nodes[:5]}
        assert n.results[0].answer_rule == "max_log_likelihood" and n.results[0].recheck == "checked"
        assert n.machine.recheck_status == "checked"
    # each node reveals exactly once, and never before commits close
    reveals = [(t, p) for t, p in sim.sent if p[0] == "reveal"]
    assert len(reveals) == 5 and min(t for t, _ in reveals) >= OPEN
    # one re-check per distinct output per node
    assert len(sim.rechecks) == 6 * 5 and len(set(sim.rechecks)) == 6 * 5


def test_identical_outputs_need_one_recheck() -> None:
    text = "honest identical " + "word " * 10
    nodes = [Node(pubkey(k), text, 1_000 + 10 * k) for k in range(5)]
    sim = Sim(nodes, embed, PARAMS, CONFIG, truth=HONEST)
    sim.run()
    assert {n.machine.state for n in nodes} == {"succeeded"}
    assert len(sim.rechecks) == 5 and len({k for _, k in sim.rechecks}) == 1
    # the tie between identical outputs (same likelihood, same text) goes to the lowest node id
    lowest = min(nodes, key=lambda n: n.key.hex())
    assert {n.machine.representative for n in nodes} == {inference_id_for(REQUEST_ID, lowest.key)}


@pytest.mark.parametrize("n_honest", [3, 5])
def test_cheating_reveals_are_rejected(n_honest: int) -> None:
    nodes = honest_nodes(n_honest)
    nodes.append(Node(pubkey(10), "garbage garbage", 1_010, copy_from=0))  # copied commit
    nodes.append(Node(pubkey(11), "honest looking commit", 1_020, reveal_text="spam spam"))
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=3, truth=HONEST)
    sim.run()
    states = outcome(sim)
    assert len(states) == 1
    state, output = states.pop()
    # rejected reveals do not count towards the quorum: 3 valid of 5 cannot succeed
    if n_honest == 3:
        assert state == "failed:not_enough_valid_reveals" and output is None
    else:
        assert state == "succeeded" and output.startswith("honest")
    for n in nodes[:n_honest]:
        st_ = n.machine.reveal_statuses()
        assert st_[pubkey(10).hex()] == "rejected:commit_mismatch"
        assert st_[pubkey(11).hex()] in ("rejected:embedding_mismatch", "rejected:failed_recheck")


def test_not_enough_commits_and_missing_reveals() -> None:
    sim = Sim(honest_nodes(4), embed, PARAMS, CONFIG, truth=HONEST)
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:not_enough_commits"}
    # they still revealed (commits were closed, nothing to copy): a peer that counted more can use it
    assert len([p for _, p in sim.sent if p[0] == "reveal"]) == 4

    nodes = honest_nodes(5)
    nodes[0].silent_reveal = True
    nodes[1].silent_reveal = True
    nodes[2].silent_reveal = True
    sim = Sim(nodes, embed, PARAMS, CONFIG, truth=HONEST)
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:not_enough_valid_reveals"}
    rep = Reputation()
    rep.record(nodes[4].machine.reveal_statuses())
    assert rep.get(pubkey(0).hex()).missing == 1 and rep.get(pubkey(4).hex()).accepted == 1
    assert rep.score(pubkey(0).hex()) < 0.5 < rep.score(pubkey(4).hex())


def test_no_cluster() -> None:
    nodes = [Node(pubkey(k), f"nonsense {k}", 1_000 + k) for k in range(5)]
    sim = Sim(nodes, embed, PARAMS, CONFIG)  # nobody can re-check: clustering alone decides
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:no_cluster_of_needed_size"}
    assert {n.machine.recheck_status for n in sim.nodes} == {"unavailable"}


def test_failure_caused_by_the_recheck_names_it() -> None:
    text = "nonsense but identical"
    nodes = [Node(pubkey(k), text, 1_000 + k) for k in range(5)]
    sim = Sim(nodes, embed, PARAMS, CONFIG, truth=HONEST)
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:failed_recheck"}
    rep = Reputation()
    rep.record(nodes[0].machine.reveal_statuses())
    assert rep.get(pubkey(1).hex()).failed_rechecks == 1


def _machine(now: int = 0, params: SecurityParams = PARAMS) -> QuorumMachine:
    m, acts = QuorumMachine.start(
        request_id=REQUEST_ID, created_at_ms=0, params=params, own_pubkey=pubkey(0), now_ms=now, config=CONFIG
    )
    return m


def _commit(i: int, text: str) -> tuple[bytes, str, bytes]:
    iid = inference_id_for(REQUEST_ID, pubkey(i))
    return pubkey(i), iid, make_commit(binary_embedding(embed(text)), pubkey(i), iid)


def _commit_seen(m: QuorumMachine, i: int, text: str, now: int, model_hash: str = HASH_A, model: str = MODEL):
    return m.commit_seen(*_commit(i, text), now, model=model, model_hash=model_hash)


def _reveal_seen(m: QuorumMachine, i: int, text: str, now: int, model_hash: str = HASH_A):
    return m.reveal_seen(
        pubkey(i),
        inference_id_for(REQUEST_ID, pubkey(i)),
        text,
        binary_embedding(embed(text)),
        now,
        model=MODEL,
        model_hash=model_hash,
    )


def _refs(idx) -> list[CommitRef]:
    return [CommitRef(pk.hex(), iid, c) for pk, iid, c in (_commit(i, f"honest {i}") for i in idx)]


def test_expired_when_seen_late_and_final_is_final() -> None:
    m, acts = QuorumMachine.start(
        request_id=REQUEST_ID,
        created_at_ms=0,
        params=PARAMS,
        own_pubkey=pubkey(0),
        now_ms=OPEN,
        config=CONFIG,
    )
    assert m.state == "expired" and isinstance(acts[0], Finished)
    assert _commit_seen(m, 1, "honest x", OPEN + 1) == []
    assert m.state == "expired"


def test_one_commit_per_node_and_derived_ids_only() -> None:
    m = _machine()
    pk, iid, c = _commit(1, "honest a")
    m.commit_seen(pk, iid, c, 10, model=MODEL, model_hash=HASH_A)
    m.commit_seen(pk, iid, _commit(1, "other")[2], 11, model=MODEL, model_hash=HASH_A)  # equivocation
    m.commit_seen(pk, iid, c, 12, model=MODEL, model_hash=HASH_B)  # same commit, other weights
    m.commit_seen(pk, "f" * 32, c, 13, model=MODEL, model_hash=HASH_A)  # id not derived from the key
    assert len(m.commits) == 1 and m.commits[pk.hex()].commit == c
    assert m.equivocations == {pk.hex(): 2}


def test_fast_fake_quorum_cannot_close_commits_or_make_us_reveal() -> None:
    """Quorum commits, a reveal request naming them and their reveals, all at t < 100:
    commits stay open until the window closes, and we reveal only then."""
    m = _machine(params=P3)
    acts = []
    for i in (1, 2, 3):
        acts += _commit_seen(m, i, f"honest {i}", 10 + i)
    acts += m.reveal_request_seen(pubkey(1), _refs((1, 2, 3)), 20)
    for i in (1, 2, 3):
        acts += _reveal_seen(m, i, f"honest {i}", 30 + i)
    acts += m.own_inference_done("honest 0", embed("honest 0"), 4_000, model=MODEL, model_hash=HASH_A)
    acts += _commit_seen(m, 4, "honest 4", CLOSE + 400)  # made before the close, arrives in the grace
    for t in range(100, OPEN, 100):
        acts += m.tick(t)
    assert not any(isinstance(a, PublishReveal | RequestRecheck | PublishRejection) for a in acts)
    assert m.commit_set() == {pubkey(i).hex() for i in range(5)} and not m.final
    assert all(rv.status == "parked" for rv in m.reveals.values())
    acts = m.tick(OPEN)
    assert sum(isinstance(a, PublishReveal) for a in acts) == 1 and m.revealing
    assert {a.output for a in acts if isinstance(a, RequestRecheck)} == {f"honest {i}" for i in range(4)}


def test_commits_after_the_window_are_ignored() -> None:
    m = _machine()
    assert m.commit_close_ms == CLOSE and m.reveal_open_ms == OPEN
    _commit_seen(m, 1, "honest 1", OPEN - 1)  # arrives inside the grace: counts
    _commit_seen(m, 2, "honest 2", OPEN)  # too late
    assert set(m.commits) == {pubkey(1).hex()}
    # our own inference done after the close: no commit at all
    assert m.own_inference_done("honest 0", embed("honest 0"), CLOSE, model=MODEL, model_hash=HASH_A) == []
    assert m.own is None
    assert m.state == "failed:not_enough_commits"


def test_late_commit_cannot_reveal_and_reveal_requests_are_hints() -> None:
    m = _machine()
    for i in range(1, 6):
        _commit_seen(m, i, f"honest {i}", 10)
    m.reveal_request_seen(pubkey(1), _refs(range(1, 6)), 20)
    assert m.reveal_open_ms == OPEN  # a reveal request moves no deadline
    _commit_seen(m, 7, "honest 7", OPEN + 100)
    assert pubkey(7).hex() not in m.commits
    _reveal_seen(m, 7, "honest 7", OPEN + 200)
    assert pubkey(7).hex() not in m.reveals


def test_failed_outputs_are_excluded_before_clustering() -> None:
    """Two forged outputs that embed like the honest ones (same topic) fail the re-check:
    they are not members and cannot be the answer, however likely they claim to be."""
    forged = "honest forged " + "word " * 20
    nodes = honest_nodes(3) + [Node(pubkey(20 + k), forged, 1_001 + k) for k in range(2)]
    truth = passes_if(lambda t: t.startswith("honest answer"))
    sim = Sim(nodes, embed, P3, CONFIG, truth=truth)
    sim.run()
    forged_ids = {inference_id_for(REQUEST_ID, pubkey(20 + k)) for k in range(2)}
    for n in nodes[:3]:
        m = n.machine
        assert m.state == "succeeded" and m.result_output.startswith("honest answer")
        assert not forged_ids & set(m.outcome_members) and len(m.outcome_members) == 3
        assert m.reveal_statuses()[pubkey(20).hex()] == "rejected:failed_recheck"
    # without the re-check (no node holds the model) the forged pair would have been members
    for n in nodes:
        n.holds_model = False
    sim = Sim(nodes, embed, P3, CONFIG, truth=truth)
    sim.run()
    assert forged_ids <= set(nodes[0].machine.outcome_members)
    assert nodes[0].machine.answer_rule == "medoid" and nodes[0].machine.recheck_status == "unavailable"


def test_machine_waits_for_every_verdict() -> None:
    m = _machine()
    m.own_inference_done("honest 0", embed("honest 0"), 100, model=MODEL, model_hash=HASH_A)
    for i in range(1, 5):
        _commit_seen(m, i, f"honest {i}", 200)
    acts = m.tick(OPEN)
    for i in range(1, 5):
        acts += _reveal_seen(m, i, f"honest {i}", OPEN + 10)
    for a in [a for a in acts if hasattr(a, "inference_id") and type(a).__name__ == "RequestEmbedding"]:
        acts += m.embedding_ready(a.inference_id, embed(a.output), OPEN + 20)
    asks = [a for a in acts if isinstance(a, RequestRecheck)]
    assert len(asks) == 5 and not m.final
    for a in asks[:-1]:
        m.recheck_ready(a.key, RecheckVerdict("passed", None, -10.0), OPEN + 30)
    assert not m.final  # one verdict still missing
    acts = m.recheck_ready(asks[-1].key, RecheckVerdict("passed", None, -1.0), OPEN + 40)
    res = [a for a in acts if isinstance(a, PublishResult)]
    assert m.state == "succeeded" and res and res[0].output == asks[-1].output  # highest likelihood


def test_missing_verdict_counts_as_unavailable_at_the_hard_stop() -> None:
    m = _machine()
    m.own_inference_done("honest 0", embed("honest 0"), 100, model=MODEL, model_hash=HASH_A)
    for i in range(1, 5):
        _commit_seen(m, i, f"honest {i}", 200)
    acts = m.tick(OPEN)
    for i in range(1, 5):
        acts += _reveal_seen(m, i, f"honest {i}", OPEN + 10)
        acts += m.embedding_ready(inference_id_for(REQUEST_ID, pubkey(i)), embed(f"honest {i}"), OPEN + 20)
    assert not m.final
    m.tick(m.hard_stop_ms)
    assert m.state == "succeeded" and m.answer_rule == "medoid" and m.recheck_status == "unavailable"


def test_wrong_model_or_weights_are_refused() -> None:
    m = _machine()
    acts = _commit_seen(m, 1, "honest 1", 10, model_hash=HASH_B)
    acts += _commit_seen(m, 2, "honest 2", 10, model="gpt-9")
    refused = {a.node_id: a.reason for a in acts if isinstance(a, CommitRefused)}
    assert refused == {pubkey(1).hex(): "model_hash_not_accepted", pubkey(2).hex(): "model_not_accepted"}
    assert m.commits == {}
    _commit_seen(m, 1, "honest 1", 20)  # the first commit decided: a corrected one is not counted
    assert m.commits == {}
    for i in range(3, 8):
        _commit_seen(m, i, f"honest {i}", 30)
    m.tick(OPEN)
    acts = _reveal_seen(m, 3, "honest 3", OPEN + 10, model_hash=HASH_B)  # reveal under other weights
    rej = [a for a in acts if isinstance(a, PublishRejection)]
    assert rej and rej[0].reason == "model_mismatch"
    st_ = m.reveal_statuses()
    assert st_[pubkey(1).hex()] == "rejected:model_hash_not_accepted"
    assert st_[pubkey(3).hex()] == "rejected:model_mismatch"
    with pytest.raises(ValueError, match="model_hash_not_accepted"):
        _machine().own_inference_done("x", embed("x"), 5, model=MODEL, model_hash=HASH_B)


def test_snapshot_roundtrip_mid_protocol() -> None:
    nodes = honest_nodes(5)
    sim = Sim(nodes, embed, PARAMS, CONFIG, truth=HONEST, recheck_ms=400)
    # run into the reveal phase (verdicts outstanding), snapshot every machine through JSON, then finish
    for until in (1_400, OPEN + 120, OPEN + 300):
        sim.run(until_ms=until)
        for n in nodes:
            d = json.loads(json.dumps(n.machine.to_dict()))
            restored = QuorumMachine.from_dict(d)
            assert restored.to_dict() == n.machine.to_dict()
            n.machine = restored
    assert any(n.machine.rechecks_requested for n in nodes)
    # what a restarted daemon must start again: every outstanding embedding and re-check
    for n in nodes:
        work = n.machine.pending_work()
        keys = [a.key for a in work if isinstance(a, RequestRecheck)]
        assert len(keys) == len(set(keys)) == len(n.machine.rechecks_requested - set(n.machine.verdicts))
    sim.run()
    assert {n.machine.state for n in nodes} == {"succeeded"}
    assert len([p for _, p in sim.sent if p[0] == "reveal"]) == 5
    final = QuorumMachine.from_dict(json.loads(json.dumps(nodes[0].machine.to_dict())))
    assert final.to_dict() == nodes[0].machine.to_dict() and final.verdicts == nodes[0].machine.verdicts
    with pytest.raises(ValueError):
        QuorumMachine.from_dict({"version": 1})


def test_security_params_are_checked() -> None:
    with pytest.raises(ValueError):
        SecurityParams(3, 10_000, 0.5, 0.6, accepted_models=("a", "a@" + HASH_A))
    with pytest.raises(ValueError):
        SecurityParams(3, 10_000, 0.5, 0.6, accepted_models=(MODEL,), commit_window_ms=10_001)
    assert SecurityParams(3, 10_000, 0.5, 0.6, accepted_models=(MODEL,)).commit_window == 2_500


# ------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_honest=st.integers(3, 6), n_adv=st.integers(0, 2))
def test_network_order_independence(seed: int, n_honest: int, n_adv: int) -> None:
    """Whatever the delivery order, every node ends in the same state with the same output."""
    nodes = honest_nodes(n_honest)
    nodes += [Node(pubkey(20 + k), f"adversary {k}", 1_005 + k) for k in range(n_adv)]
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=seed, latency_ms=1 + seed % 40, truth=HONEST)
    sim.run()
    states = outcome(sim)
    assert len(states) == 1
    state, output = states.pop()
    if n_honest >= 5:
        assert state == "succeeded" and output.startswith("honest")
    elif n_honest + n_adv >= 5:
        # the adversaries' outputs fail the re-check and do not count towards quorum 5
        assert state == "failed:failed_recheck" and output is None
    else:
        assert state == "failed:not_enough_commits" and output is None
    # no node is counted twice anywhere
    for n in nodes:
        assert len(n.machine.commits) == len({c.inference_id for c in n.machine.commits.values()})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), late=st.sampled_from(["commit", "reveal", "rr", "verdict"]))
def test_late_packets_change_nothing(seed: int, late: str) -> None:
    nodes = honest_nodes(5)
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=seed, truth=HONEST)
    sim.run()
    before = [json.dumps(n.machine.to_dict(), sort_keys=True) for n in nodes]
    pk, iid, c = _commit(40, "adversary late")
    for n in nodes:
        m = n.machine
        if late == "commit":
            acts = m.commit_seen(pk, iid, c, 100_000, model=MODEL, model_hash=HASH_A)
        elif late == "reveal":
            acts = _reveal_seen(m, 40, "adversary late", 100_000)
        elif late == "verdict":
            acts = m.recheck_ready(next(iter(m.verdicts)), RecheckVerdict("failed", "late lie"), 100_000)
        else:
            acts = m.reveal_request_seen(pk, [CommitRef(pk.hex(), iid, c)], 100_000)
        assert acts == []
    assert before == [json.dumps(n.machine.to_dict(), sort_keys=True) for n in nodes]


def test_own_reveal_once_under_duplicate_reveal_requests() -> None:
    m = _machine()
    acts = m.own_inference_done("honest 0", embed("honest 0"), 5, model=MODEL, model_hash=HASH_A)
    for i in range(1, 5):
        _commit_seen(m, i, f"honest {i}", 10)
    refs = _refs(range(0, 5))
    for sender in range(1, 5):
        acts += m.reveal_request_seen(pubkey(sender), refs, 20 + sender)
    assert sum(isinstance(a, PublishReveal) for a in acts) == 0  # not before commits close
    acts += m.tick(OPEN)
    for sender in range(1, 5):
        acts += m.reveal_request_seen(pubkey(sender), refs[::-1], OPEN + 30 + sender)
        acts += m.tick(OPEN + 2_000 + sender)
    assert sum(isinstance(a, PublishReveal) for a in acts) == 1
    # a received reveal request already listed our whole commit set: we publish none
    assert not any(isinstance(a, PublishRevealRequest) for a in acts) and m.published_rr


def test_our_reveal_request_lists_the_commit_set_after_the_jitter() -> None:
    m = _machine()
    m.own_inference_done("honest 0", embed("honest 0"), 5, model=MODEL, model_hash=HASH_A)
    for i in range(1, 5):
        _commit_seen(m, i, f"honest {i}", 10)
    acts = m.tick(OPEN)
    assert not any(isinstance(a, PublishRevealRequest) for a in acts)
    acts = m.tick(OPEN + 2 * CONFIG.reveal_request_grace_ms)
    rr = [a for a in acts if isinstance(a, PublishRevealRequest)]
    assert len(rr) == 1 and {c.node_id for c in rr[0].commits} == set(m.commit_set())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3), st.booleans(), st.binary(min_size=32, max_size=32), st.integers(0, 40_000)
        ),
        max_size=30,
    )
)
def test_a_node_is_never_counted_twice(events: list[tuple[int, bool, bytes, int]]) -> None:
    """Any mix of repeated, conflicting, mis-labelled and late commits counts each key once."""
    m = _machine()
    now = 0
    for who, derived, commit, dt in events:
        now = min(now + dt % 3_000, 29_999)
        pk = pubkey(who)
        iid = inference_id_for(REQUEST_ID, pk) if derived else inference_id_for(REQUEST_ID, pubkey(who + 7))
        m.commit_seen(pk, iid, commit, now, model=MODEL, model_hash=HASH_A)
    assert set(m.commits) <= {pubkey(k).hex() for k in range(4)}
    for node_id, c in m.commits.items():
        assert c.inference_id == inference_id_for(REQUEST_ID, bytes.fromhex(node_id))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    honest_done=st.lists(st.integers(1, CLOSE - 1), min_size=3, max_size=5),
    n_fast=st.integers(3, 5),
    latency=st.integers(1, 400),
)
def test_honest_commits_inside_the_window_are_always_in_every_commit_set(
    seed: int, honest_done: list[int], n_fast: int, latency: int
) -> None:
    """However many fake identities commit at once and ask for reveals at once, every
    honest node that commits inside the window (propagation within commit_grace_ms) is
    in every honest node's commit set, no honest node reveals before the window closes,
    and the fakes, whose outputs fail the re-check, are never members."""
    nodes = [Node(pubkey(k), f"honest answer {k} " + "word " * 20, t) for k, t in enumerate(honest_done)]
    nodes += [Node(pubkey(50 + k), "fake fake fake", 10 + k, eager=True) for k in range(n_fast)]
    sim = Sim(nodes, embed, P3, CONFIG, seed=seed, latency_ms=latency, truth=HONEST)
    sim.run()
    honest_keys = {n.key.hex() for n in nodes[: len(honest_done)]}
    fake_ids = {inference_id_for(REQUEST_ID, pubkey(50 + k)) for k in range(n_fast)}
    for n in nodes[: len(honest_done)]:
        assert honest_keys <= n.machine.commit_set()
        assert n.machine.state == "succeeded" and not fake_ids & set(n.machine.outcome_members)
    assert all(t >= OPEN for t, p in sim.sent if p[0] == "reveal" and p[1].hex() in honest_keys)
