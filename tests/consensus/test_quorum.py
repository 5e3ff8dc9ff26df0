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
    Finished,
    PublishReveal,
    QuorumConfig,
    QuorumMachine,
    Reputation,
    SecurityParams,
    binary_embedding,
    inference_id_for,
    make_commit,
)
from tests.consensus.sim import REQUEST_ID, Node, Sim, pubkey

PARAMS = SecurityParams(quorum=5, max_time_ms=30_000, sec_distance=0.1, sec_percentage=0.6)
CONFIG = QuorumConfig(
    reveal_request_grace_ms=300, commit_grace_ms=500, reveal_window_ms=5_000, consensus_window_ms=5_000
)


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
    sim = Sim(nodes, embed, PARAMS, CONFIG)
    sim.run()
    states = outcome(sim)
    assert len(states) == 1
    state, output = states.pop()
    assert state == "succeeded" and output.startswith("honest")
    for n in nodes:
        assert n.machine.reveal_statuses() == {k.key.hex(): "accepted" for k in nodes[:5]}
    # each node reveals exactly once, whatever the number of reveal requests
    reveals = [p for _, p in sim.sent if p[0] == "reveal"]
    assert len(reveals) == 5


@pytest.mark.parametrize("n_honest", [3, 5])
def test_cheating_reveals_are_rejected(n_honest: int) -> None:
    nodes = honest_nodes(n_honest)
    nodes.append(Node(pubkey(10), "garbage garbage", 1_010, copy_from=0))  # copied commit
    nodes.append(Node(pubkey(11), "honest looking commit", 1_020, reveal_text="spam spam"))
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=3)
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
        assert st_[pubkey(11).hex()] == "rejected:embedding_mismatch"


def test_not_enough_commits_and_missing_reveals() -> None:
    sim = Sim(honest_nodes(4), embed, PARAMS, CONFIG)
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:not_enough_commits"}

    nodes = honest_nodes(5)
    nodes[0].silent_reveal = True
    nodes[1].silent_reveal = True
    nodes[2].silent_reveal = True
    sim = Sim(nodes, embed, PARAMS, CONFIG)
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:not_enough_valid_reveals"}
    rep = Reputation()
    rep.record(nodes[4].machine.reveal_statuses())
    assert rep.get(pubkey(0).hex()).missing == 1 and rep.get(pubkey(4).hex()).accepted == 1
    assert rep.score(pubkey(0).hex()) < 0.5 < rep.score(pubkey(4).hex())


def test_no_cluster() -> None:
    nodes = [Node(pubkey(k), f"nonsense {k}", 1_000 + k) for k in range(5)]
    sim = Sim(nodes, embed, PARAMS, CONFIG)
    sim.run()
    assert {n.machine.state for n in sim.nodes} == {"failed:no_cluster_of_needed_size"}


def _machine(now: int = 0, **kw) -> QuorumMachine:
    m, acts = QuorumMachine.start(
        request_id=REQUEST_ID,
        created_at_ms=0,
        params=PARAMS,
        own_pubkey=pubkey(0),
        now_ms=now,
        config=CONFIG,
        **kw,
    )
    return m


def _commit(i: int, text: str) -> tuple[bytes, str, bytes]:
    iid = inference_id_for(REQUEST_ID, pubkey(i))
    return pubkey(i), iid, make_commit(binary_embedding(embed(text)), pubkey(i), iid)


def test_expired_when_seen_late_and_final_is_final() -> None:
    m, acts = QuorumMachine.start(
        request_id=REQUEST_ID, created_at_ms=0, params=PARAMS, own_pubkey=pubkey(0), now_ms=30_000
    )
    assert m.state == "expired" and isinstance(acts[0], Finished)
    assert m.commit_seen(*_commit(1, "honest x"), 30_001) == []
    assert m.state == "expired"


def test_one_commit_per_node_and_derived_ids_only() -> None:
    m = _machine()
    pk, iid, c = _commit(1, "honest a")
    m.commit_seen(pk, iid, c, 10)
    m.commit_seen(pk, iid, _commit(1, "other")[2], 11)  # equivocation
    m.commit_seen(pk, "f" * 32, c, 12)  # id not derived from the key
    assert len(m.commits) == 1 and m.commits[pk.hex()].commit == c
    assert m.equivocations == {pk.hex(): 1}


def test_forged_reveal_request_entries_are_ignored() -> None:
    m = _machine()
    for i in range(1, 6):
        m.commit_seen(*_commit(i, f"honest {i}"), 10 + i)
    forged = [
        CommitRef(pubkey(i).hex(), inference_id_for(REQUEST_ID, pubkey(i)), b"\x00" * 32) for i in range(1, 6)
    ]
    m.reveal_request_seen(pubkey(50), forged, 20)
    assert m.named() == set() and m.first_valid_rr_ms is None


def test_commits_after_deadline_ignored() -> None:
    m = _machine()
    m.commit_seen(*_commit(1, "honest 1"), 30_000)
    assert m.commits == {}
    assert m.state == "failed:not_enough_commits"


def test_reveal_not_named_is_not_counted_and_reveal_request_after_commits_close() -> None:
    m = _machine()
    for i in range(1, 6):
        m.commit_seen(*_commit(i, f"honest {i}"), 10)
    refs = [CommitRef(pk.hex(), iid, c) for pk, iid, c in (_commit(i, f"honest {i}") for i in range(1, 6))]
    late_pk, late_iid, late_c = _commit(7, "honest 7")
    m.reveal_request_seen(pubkey(1), refs, 20)  # valid: closes commits at 20 + 500
    m.commit_seen(late_pk, late_iid, late_c, 600)  # after the commit deadline
    assert late_pk.hex() not in m.commits
    m.reveal_seen(late_pk, late_iid, "honest 7", binary_embedding(embed("honest 7")), 700)
    assert late_pk.hex() not in m.reveals


def test_snapshot_roundtrip_mid_protocol() -> None:
    nodes = honest_nodes(5)
    sim = Sim(nodes, embed, PARAMS, CONFIG)
    # run a little, snapshot every machine through JSON, then finish
    sim.run(until_ms=1_400)
    for n in nodes:
        d = json.loads(json.dumps(n.machine.to_dict()))
        restored = QuorumMachine.from_dict(d)
        assert restored.to_dict() == n.machine.to_dict()
        n.machine = restored
    sim.run()
    assert {n.machine.state for n in nodes} == {"succeeded"}
    assert len([p for _, p in sim.sent if p[0] == "reveal"]) == 5
    with pytest.raises(ValueError):
        QuorumMachine.from_dict({"version": 99})


# ------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_honest=st.integers(3, 6), n_adv=st.integers(0, 2))
def test_network_order_independence(seed: int, n_honest: int, n_adv: int) -> None:
    """Whatever the delivery order, every node ends in the same state with the same output."""
    nodes = honest_nodes(n_honest)
    nodes += [Node(pubkey(20 + k), f"adversary {k}", 1_005 + k) for k in range(n_adv)]
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=seed, latency_ms=1 + seed % 40)
    sim.run()
    states = outcome(sim)
    assert len(states) == 1
    state, output = states.pop()
    if n_honest >= 3 and n_honest + n_adv >= 5:
        assert state == "succeeded" and output.startswith("honest")
    # no node is counted twice anywhere
    for n in nodes:
        assert len(n.machine.commits) == len({c.inference_id for c in n.machine.commits.values()})


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), late=st.sampled_from(["commit", "reveal", "rr"]))
def test_late_packets_change_nothing(seed: int, late: str) -> None:
    nodes = honest_nodes(5)
    sim = Sim(nodes, embed, PARAMS, CONFIG, seed=seed)
    sim.run()
    before = [json.dumps(n.machine.to_dict(), sort_keys=True) for n in nodes]
    pk, iid, c = _commit(40, "adversary late")
    for n in nodes:
        m = n.machine
        if late == "commit":
            acts = m.commit_seen(pk, iid, c, 100_000)
        elif late == "reveal":
            acts = m.reveal_seen(
                pk, iid, "adversary late", binary_embedding(embed("adversary late")), 100_000
            )
        else:
            acts = m.reveal_request_seen(pk, [CommitRef(pk.hex(), iid, c)], 100_000)
        assert acts == []
    assert before == [json.dumps(n.machine.to_dict(), sort_keys=True) for n in nodes]


def test_own_reveal_once_under_duplicate_reveal_requests() -> None:
    m = _machine()
    acts = m.own_inference_done("honest 0", embed("honest 0"), 5)
    for i in range(1, 5):
        m.commit_seen(*_commit(i, f"honest {i}"), 10)
    refs = [CommitRef(pk.hex(), iid, c) for pk, iid, c in (_commit(i, f"honest {i}") for i in range(0, 5))]
    for sender in range(1, 5):
        acts += m.reveal_request_seen(pubkey(sender), refs, 20 + sender)
        acts += m.reveal_request_seen(pubkey(sender), refs[::-1], 30 + sender)
    assert sum(isinstance(a, PublishReveal) for a in acts) == 1


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
        m.commit_seen(pk, iid, commit, now)
    assert set(m.commits) <= {pubkey(k).hex() for k in range(4)}
    for node_id, c in m.commits.items():
        assert c.inference_id == inference_id_for(REQUEST_ID, bytes.fromhex(node_id))
