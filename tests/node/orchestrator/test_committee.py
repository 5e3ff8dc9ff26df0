"""Committees: views from real peer records, self-selection, widening, the verifier's
check of commits (and its counting), the share statistics."""

from __future__ import annotations

from consensus import sortition as so
from node import metrics, wire
from node.identity import Identity
from node.orchestrator.committee import Committees
from node.p2p.peers import PeerRecord
from tests.node.p2p.conftest import request_body

NOW = 1_800_000_000_000


def _request(quorum: int = 3, window_ms: int = 9_000) -> wire.InferenceRequest:
    body = request_body("committee")
    frame = body.security_frame.model_copy(update={"quorum": quorum, "commit_window_ms": window_ms})
    return body.model_copy(update={"security_frame": frame})


def _net(n: int) -> tuple[list[Identity], list[PeerRecord]]:
    ids = [Identity.generate() for _ in range(n)]
    recs = [
        PeerRecord(node_id=i.node_id, peer_id="", models=("m",), workers={"m": 1}, first_seen_ms=NOW)
        for i in ids
    ]
    return ids, recs


def _committees(me: Identity, recs: list[PeerRecord], **kw) -> Committees:
    return Committees(
        node_id=me.node_id,
        peers=lambda: recs,
        own_workers=lambda: {"m": 1},
        reputation=lambda: {},
        started_ms=NOW,
        **kw,
    )


def _commit(rid: str, rnd: int | None, cap: int | None = 1) -> wire.InferenceCommit:
    return wire.InferenceCommit(
        request_id=rid,
        inference_id=rid[:32],
        model="m",
        model_hash="sha256:" + "0" * 64,
        commit=bytes(32),
        sortition_round=rnd,
        capacity=cap,
    )


def test_six_nodes_select_a_committee_of_four_or_more_and_agree() -> None:
    ids, recs = _net(6)
    body = _request()
    sizes = []
    for k in range(40):
        rid = f"{k:064x}"
        selected = []
        for me in ids:
            c = _committees(me, recs)
            rc = c.open(rid, body, NOW, NOW)
            assert rc is not None and rc.config.round_ms == 3_000 and len(rc.view.weights) == 6
            if c.own_round(rid, NOW) is not None:
                selected.append(me.node_id)
        assert sorted(selected) == rc.view.members(rid, rc.first)  # every node agrees
        sizes.append(len(selected))
    assert min(sizes) >= 4 and sum(sizes) / len(sizes) < 6


def test_few_peers_or_sortition_off_means_everyone_runs() -> None:
    ids, recs = _net(3)
    c = _committees(ids[0], recs)
    rc = c.open("ab" * 32, _request(), NOW, NOW)
    # Fewer eligible nodes than quorum + spare: every round selects everyone, and
    # ``first_round`` is the last one (the run-everywhere fallback) at once.
    assert c.own_round("ab" * 32, NOW) == rc.first
    assert rc.view.members("ab" * 32, 0) == sorted(i.node_id for i in ids)
    off = _committees(ids[0], recs, enabled=False)
    assert off.open("cd" * 32, _request(), NOW, NOW) is None and off.own_round("cd" * 32, NOW) == 0
    lone = Committees(
        node_id=ids[0].node_id, peers=lambda: [], own_workers=lambda: {"m": 1}, reputation=lambda: {}
    )
    lone.open("ef" * 32, _request(), NOW, NOW)
    assert lone.own_round("ef" * 32, NOW) is not None


def test_outsider_commits_are_ignored_and_counted_members_widen_in_time() -> None:
    ids, recs = _net(6)
    body = _request()
    for k in range(500):  # a request where ids[0] is outside the first round, even with slack
        rid = f"{k + 1000:064x}"
        c = _committees(ids[1], recs, slack=1.1)
        rc = c.open(rid, body, NOW, NOW)
        p = rc.view.probability(ids[0].node_id, rc.first) * 1.1
        if so.ticket(rid, ids[0].public_key) >= p and ids[0].node_id in rc.view.members(rid, rc.first + 1):
            break
    members = rc.view.members(rid, rc.first)
    outsider = ids[0]
    ignored_before = metrics.REGISTRY.get_sample_value("rakis_commits_ignored_total", {"reason": "round_too_early"})
    # In the first round the outsider's commit is ignored (round too early / not member).
    v = c.admit(rid, outsider.public_key, _commit(rid, rc.first), NOW)
    assert v is not None and not v.accepted
    # A verifier allows its own first round + 1 at once (views differ); later rounds
    # only as time opens them.
    v = c.admit(rid, outsider.public_key, _commit(rid, rc.first + 2), NOW)
    assert v is not None and not v.accepted and v.reason == "round_too_early"
    assert c.stats()["ignored_commits"] == 2 and c.view(rid)["ignored_commits"] == 2
    # ...and Prometheus counts them by reason.
    ignored_after = metrics.REGISTRY.get_sample_value("rakis_commits_ignored_total", {"reason": "round_too_early"})
    assert (ignored_after or 0) - (ignored_before or 0) >= 1
    # A member's commit counts.
    member = next(i for i in ids if i.node_id in members)
    assert c.admit(rid, member.public_key, _commit(rid, rc.first), NOW).accepted
    # The outsider itself waits, then joins when the next round opens (too few commits).
    oc = _committees(outsider, recs, slack=1.1)
    orc = oc.open(rid, body, NOW, NOW)
    assert orc.first == rc.first
    assert oc.own_round(rid, NOW) is None
    assert oc.own_round(rid, NOW + orc.config.round_ms) == rc.first + 1
    assert oc.commit_fields(rid) == {"sortition_round": rc.first + 1, "capacity": 1}
    # ...and the verifier accepts that widened commit once the round is open.
    assert c.admit(rid, outsider.public_key, _commit(rid, rc.first + 1), NOW + rc.config.round_ms).accepted
    oc.close(rid)
    assert oc.stats()["widened"] == 1 and oc.view(rid)["own_round"] == rc.first + 1
    assert oc.stats()["share"] == 1.0
    widened = metrics.REGISTRY.get_sample_value("rakis_committee_decisions_total", {"outcome": "widened"})
    assert widened is not None and widened >= 1


def test_no_widening_once_the_quorum_committed() -> None:
    ids, recs = _net(6)
    c = _committees(ids[0], recs)
    rid = "12" * 32
    rc = c.open(rid, _request(), NOW, NOW)
    rc.members.update(ids[i].node_id for i in range(1, 4))
    assert rc.current_round(NOW + 10 * rc.config.round_ms) == rc.first
    assert so.max_round_at(rc.first, NOW, NOW, rc.config) == rc.first + 1
