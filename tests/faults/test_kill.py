"""SIGKILL a daemon while it infers, while it owes a reveal, while it verifies; restart it;
a partitioned (frozen) node rejoining. Three real `rakis node start` daemons (tiny Llama,
MiniLM) on 127.0.0.1; each test leaves the three running for the next.

Stages are caught by polling the victim's own HTTP view (`own_inference.state`, `stage`)
and, where a window is too short to hit by polling, widened by freezing the victim with
SIGSTOP first (a frozen process is killed exactly where it stood)."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.daemon_helpers import EMBEDDING, Daemon

from .conftest import make_frame

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _restart(d: Daemon, peers: list[Daemon]) -> None:
    d.kill()
    d.start().wait_ready()
    d.wait_for(lambda: d.peer_count() >= len(peers), 60, "restarted node sees its peers")
    for p in peers:
        p.wait_for(
            lambda p=p: d.node_id in {x.get("node_id") for x in p.get("/v1/peers").json()["peers"]},
            60,
            "peers see the restarted node",
        )


def _members(view: dict) -> set[str]:
    return {m["node_id"] for m in view["members"]}


def _all_succeed(rid: str, nodes: list[Daemon], timeout: float = 150) -> list[dict]:
    views = [d.wait_succeeded(rid, timeout) for d in nodes]
    assert all(v["reason"] is None for v in views), [v["reason"] for v in views]
    assert len({v["answer"] for v in views}) == 1
    return views


def test_partitioned_node_rejoins_and_takes_part_again(trio_net):
    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    c.signal(signal.SIGSTOP)  # cut off: no traffic in or out
    try:
        rid = a.submit(make_frame("What is two plus two?", quorum=2, max_time_ms=60_000))
        views = _all_succeed(rid, [a, b], timeout=90)
        assert c.node_id not in _members(views[0])
    finally:
        c.signal(signal.SIGCONT)
    # Back on the network: it answers, stays connected, and is a member of the next
    # request that needs all three.
    c.wait_for(lambda: c.peer_count() >= 2, 60, "c reconnected")
    time.sleep(1.0)
    rid2 = a.submit(make_frame("Name a fruit.", quorum=3, max_time_ms=120_000))
    views = _all_succeed(rid2, [a, b, c])
    assert _members(views[0]) == {a.node_id, b.node_id, c.node_id}


def test_killed_while_inferring_resumes_inference_after_restart(trio_net):
    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    # A long generation keeps c in the inferring stage long enough to catch it. Commits
    # are time-boxed (protocol 2): the restarted c must load, reconnect and run the whole
    # generation again inside the commit window, so the window is 60 s, not the default
    # 37.5 s of a 150 s budget.
    rid = a.submit(
        make_frame(
            "Tell a long story about rivers.",
            quorum=3,
            max_time_ms=150_000,
            max_tokens=1500,
            commit_window_ms=60_000,
        )
    )
    c.wait_for(
        lambda: (v := c.request(rid)) and (v.get("own_inference") or {}).get("state") == "inferring",
        60,
        "c inferring",
        step=0.05,
    )
    c.kill()
    # Killed mid-inference: on disk it is still "inferring", with no output and no commit.
    _restart(c, [a, b])
    views = _all_succeed(rid, [a, b, c])
    assert c.node_id in _members(views[0])
    assert views[2]["own_inference"]["state"] == "revealed"


def test_killed_while_owing_a_reveal_reveals_after_restart(trio_net):
    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    rid = a.submit(make_frame("Name a colour.", quorum=3, max_time_ms=150_000))
    c.wait_for(
        lambda: (v := c.request(rid)) and (v.get("own_inference") or {}).get("state") == "committed",
        60,
        "c committed",
        step=0.02,
    )
    # c's store says "committed" a moment before its outbox has gossiped the commit: wait
    # until a holds it, or the freeze would keep the commit itself from the network (then
    # the request fails with not_enough_commits, which is not what this test is about).
    a.wait_for(
        lambda: c.node_id in {x["node_id"] for x in (a.request(rid) or {}).get("commits") or []},
        30,
        "a has c's commit",
        step=0.02,
    )
    c.signal(signal.SIGSTOP)  # frozen right after its commit: it cannot answer the reveal request
    try:
        a.wait_for(
            lambda: (v := a.request(rid)) and v["stage"] in ("revealing", "verifying"),
            60,
            "a asked for reveals",
        )
        va = a.request(rid)
        assert c.node_id not in {r["node_id"] for r in va["reveals"]}, "c revealed before it was frozen"
        c.kill()  # killed while the reveal phase is on and it owes one
    finally:
        c.signal(signal.SIGCONT)
    _restart(c, [a, b])
    views = _all_succeed(rid, [a, b, c])
    assert c.node_id in _members(views[0])
    assert views[2]["own_inference"]["state"] == "revealed"


def test_killed_while_verifying_finishes_verification_after_restart(trio_net):
    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    rid = b.submit(make_frame("Say something about the sea.", quorum=3, max_time_ms=150_000))
    a.wait_for(lambda: (v := a.request(rid)) and len(v["commits"]) >= 3, 60, "a saw 3 commits", step=0.02)
    # Keep a's embedding worker busy with ordinary work, so the verification of the
    # reveals (arriving now) waits: a sits in the verifying stage for a while.
    texts = [f"filler text number {i} " + "word " * 200 for i in range(256)]

    def keep_busy() -> None:
        try:
            httpx.post(a.url + "/v1/embeddings", json={"model": EMBEDDING, "input": texts}, timeout=300)
        except httpx.HTTPError:
            pass  # the node is killed under it: expected

    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    a.wait_for(lambda: (v := a.request(rid)) and v["stage"] == "verifying", 60, "a verifying", step=0.02)
    a.kill()
    busy.join(10)
    _restart(a, [b, c])
    views = _all_succeed(rid, [a, b, c])
    assert _members(views[0]) == {a.node_id, b.node_id, c.node_id}
