"""End to end: real `rakis node start` daemons on 127.0.0.1, real default models.

One 3-node testnet (module fixture) serves all tests, in order; a 4th garbage node
joins for one test. Nodes that a test kills are restarted by that test, so the next
one starts from a full network again.
"""

from __future__ import annotations

import hashlib
import signal
import time

import msgpack
import pytest

from tests.daemon_helpers import Daemon
from tests.e2e.conftest import MODEL, make_frame

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_state: dict = {}


def test_three_nodes_reach_consensus(testnet):
    a, b, c = testnet["a"], testnet["b"], testnet["c"]
    frame = make_frame(prompt="What is the capital of France? Answer in one word.", quorum=3)
    r = a.post_request(frame)
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    views = [d.wait_final(rid) for d in (a, b, c)]
    for v in views:
        assert v["state"] == "succeeded", v
        assert v["reason"] is None
        assert v["request_id"] == rid
        assert {m["node_id"] for m in v["members"]} == {a.node_id, b.node_id, c.node_id}
        assert v["answer"]
        assert v["certificate"] is not None
    assert len({v["answer"] for v in views}) == 1
    _state["first"] = (rid, views[2]["answer"])
    metrics = a.get("/metrics").text
    assert 'rakis_requests_finished_total{outcome="succeeded",reason="none"}' in metrics
    assert "rakis_gossip_frames_out_total" in metrics


def test_invalid_signature_is_refused_and_never_gossiped(testnet):
    a, b, c = testnet["a"], testnet["b"], testnet["c"]
    good = make_frame(prompt="tampered", quorum=2)
    payload, signature = msgpack.unpackb(good)
    bad_sig = bytes([signature[0] ^ 0x01]) + signature[1:]
    frame = msgpack.packb([payload, bad_sig], use_bin_type=True)
    r = a.post_request(frame)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_signature"
    assert "signature" in r.text.lower()
    rid = hashlib.sha256(payload).hexdigest()  # the id the request would have had
    time.sleep(2)
    for d in (a, b, c):
        assert d.get(f"/v1/requests/{rid}").status_code == 404
        assert all(rq["request_id"] != rid for rq in d.get("/v1/requests").json()["requests"])


def test_openai_client_against_a_daemon(testnet):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=testnet["a"].url + "/v1", api_key="unused", timeout=60)
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
    )
    assert out.choices[0].message.content
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = "".join((ch.choices[0].delta.content or "") for ch in chunks if ch.choices)
    assert text == out.choices[0].message.content


def test_garbage_node_is_left_out(testnet, daemon_options):
    a, b, c = testnet["a"], testnet["b"], testnet["c"]
    bad = Daemon(testnet["root"] / "garbage", daemon_options, fault="garbage", bootstrap=[a.addr]).start()
    try:
        bad.wait_ready()
        a.wait_for(lambda: a.peer_count() >= 3, timeout=60, what="a sees the garbage node")
        bad.wait_for(lambda: bad.peer_count() >= 3, timeout=60, what="garbage node sees all")
        # Quorum 3 of the 4 committers: the garbage output fails its re-check on every
        # node and does not count toward the quorum (proof of inference).
        frame = make_frame(prompt="Name three primary colours.", quorum=3)
        r = b.post_request(frame)
        assert r.status_code == 200, r.text
        rid = r.json()["request_id"]
        v = c.wait_final(rid)
        assert v["state"] == "succeeded", v
        members = {m["node_id"] for m in v["members"]}
        assert bad.node_id not in members
        assert members == {a.node_id, b.node_id, c.node_id}
        honest_outputs = {m.get("output") for m in v["members"]}
        assert v["answer"] in honest_outputs
        verdicts = {r["node_id"]: (r.get("recheck") or {}).get("status") for r in v["reveals"]}
        assert verdicts[bad.node_id] == "failed", v["reveals"]
        assert {verdicts[n] for n in (a.node_id, b.node_id, c.node_id)} == {"passed"}
        assert bad.request(rid) is not None
    finally:
        bad.stop()
    assert bad.proc.returncode == 0  # SIGTERM: graceful shutdown
    assert not (bad.data_dir / "node.json").exists()


def test_node_killed_mid_request_fails_with_reason_then_serves_stored_results(testnet):
    a, b, c = testnet["a"], testnet["b"], testnet["c"]
    frame = make_frame(prompt="Write one sentence about rivers.", quorum=3, max_time_ms=20_000)
    r = a.post_request(frame)
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    c.wait_for(lambda: c.request(rid) is not None, timeout=20, what="c received the request")
    c.kill(signal.SIGKILL)
    v = a.wait_final(rid, timeout=90)
    assert (v["state"], v["reason"]) == ("failed", "not_enough_commits"), v
    assert b.wait_final(rid, timeout=30)["reason"] == "not_enough_commits"
    # With c still down, a request that needs only two nodes succeeds without it.
    r = a.post_request(make_frame(prompt="Name a planet.", quorum=2, max_time_ms=40_000))
    v = b.wait_final(r.json()["request_id"], timeout=90)
    assert v["state"] == "succeeded", v
    assert {m["node_id"] for m in v["members"]} == {a.node_id, b.node_id}
    # The killed node comes back and still serves the result it stored before the kill.
    c.start().wait_ready()
    first_rid, first_answer = _state["first"]
    stored = c.request(first_rid)
    assert stored is not None and stored["state"] == "succeeded"
    assert stored["answer"] == first_answer
    assert stored["certificate"] is not None
    # It also brings the interrupted request to a final state.
    assert c.wait_final(rid, timeout=60)["state"] in ("failed", "expired")


def test_restarted_node_reveals_commit_made_before_kill(testnet):
    a, b, c = testnet["a"], testnet["b"], testnet["c"]
    c.wait_for(lambda: a.peer_count() >= 2 and c.peer_count() >= 2, timeout=60, what="network whole again")
    frame = make_frame(prompt="Say hello to the world.", quorum=3, max_time_ms=150_000)
    r = a.post_request(frame)
    assert r.status_code == 200, r.text
    rid = r.json()["request_id"]
    b.wait_for(lambda: b.request(rid) is not None, timeout=20, what="b received the request")
    b.proc.send_signal(signal.SIGSTOP)  # b cannot commit: quorum 3 is not reached
    try:
        c.wait_for(
            lambda: (v := c.request(rid)) is not None and v["stage"] == "committed",
            timeout=90,
            what="c committed",
        )
        c.kill(signal.SIGKILL)
        c.start().wait_ready()
        v = c.request(rid)
        assert v is not None and v["state"] == "pending"
        assert v["own_inference"]["state"] == "committed"
    finally:
        b.proc.send_signal(signal.SIGCONT)
    v = a.wait_final(rid, timeout=150)
    assert v["state"] == "succeeded", v
    assert c.node_id in {m["node_id"] for m in v["members"]}
    vc = c.wait_final(rid, timeout=60)
    assert vc["state"] == "succeeded"
    assert vc["own_inference"]["state"] == "revealed"
