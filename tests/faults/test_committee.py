"""Committee sortition on a 6-node testnet of real daemons (tiny random Llama).

Quorum 3, committee_factor 1.5: the expected committee is 4.5 of 6, and the first
round needs quorum + 1 spare = 4 members (else the next round, where all 6 are
selected), so each request is computed by about 5 nodes on average, not always 6. Also: a node that ignores sortition has its commits ignored (and
counted) by the others; two stopped members of a 4-member committee make it widen and
the request still succeeds. Identity puzzles are on (difficulty 8) for every daemon.

30 requests in 3 batches of 10, as the issue asks; every node's share of the work must be
within 2x of the mean. Every request waits for its full commit window, so the batches,
not the request count, set the test's duration.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest

from consensus import sortition as so
from tests.daemon_helpers import Daemon, DaemonOptions, start_network, stop_all
from tests.faults.conftest import make_frame

NAMES = ("a", "b", "c", "d", "e", "f")
QUORUM = 3
WINDOW_MS = 45_000  # round_ms = 15 s: on 2 loaded cores a commit can take > 8 s
REQUESTS = 30


@pytest.fixture(scope="module")
def six(tmp_path_factory: pytest.TempPathFactory, daemon_options: DaemonOptions) -> Any:
    opts = DaemonOptions(
        model=daemon_options.model,
        model_dir=daemon_options.model_dir,
        reveal_window_s=30,
        ready_timeout_s=300,
        final_timeout_s=150,
        keep_p2p_port=True,
        # Slack 1.1 (not 1.5): at p = 4.5/6 = 0.75, 1.5x slack would admit every commit.
        env={
            "RAKIS_PUZZLE_DIFFICULTY": "8",
            "RAKIS_SORTITION": "true",
            "RAKIS_COMMITTEE_FACTOR": "1.5",
            "RAKIS_SORTITION_SLACK": "1.1",
        },
    )
    daemons = start_network(tmp_path_factory.mktemp("committee-net"), opts, NAMES)
    try:
        # Ready = every node's committee view is complete: five peers whose peer_info
        # (models, workers) has arrived. A peer first heard through a peer_status has no
        # models until its next peer_info (up to info_interval_s later), and a request
        # opened then gets a 5-node view.
        for d in daemons:
            d.wait_for(lambda d=d: _peers_with_workers(d) >= 5, 120, "five peers with workers")
        yield {d.data_dir.name: d for d in daemons}
    finally:
        stop_all(daemons)


def _peers_with_workers(d: Daemon) -> int:
    try:
        return sum(1 for p in d.get("/v1/peers").json()["peers"] if p.get("workers"))
    except Exception:  # noqa: BLE001 - not answering yet
        return 0


def _rid(frame: bytes) -> str:
    payload, _sig = msgpack.unpackb(frame, raw=False)
    return hashlib.sha256(payload).hexdigest()


def _committed(view: dict[str, Any]) -> set[str]:
    """Nodes that ran the request as this view saw it: counted commits plus ignored ones."""
    return {c["node_id"] for c in view.get("commits") or []}


def _run_batch(net: dict[str, Daemon], frames: list[bytes]) -> list[dict[str, Any]]:
    nodes = list(net.values())
    rids = [nodes[i % len(nodes)].submit(f) for i, f in enumerate(frames)]
    with ThreadPoolExecutor(len(rids)) as pool:
        return list(pool.map(lambda r: net["a"].wait_final(r), rids))


def test_each_request_is_computed_by_a_committee_and_load_spreads(six: dict[str, Daemon]) -> None:
    views: list[dict[str, Any]] = []
    for batch in range(3):
        frames = [
            make_frame(f"committee {batch}-{i}", quorum=QUORUM, commit_window_ms=WINDOW_MS, max_tokens=4)
            for i in range(REQUESTS // 3)
        ]
        views += _run_batch(six, frames)
    assert all(v["state"] == "succeeded" for v in views), [v["state"] for v in views]
    sizes = [len(_committed(v)) for v in views]
    print("committee sizes (nodes that committed):", sizes)
    assert all(s >= QUORUM for s in sizes), sizes
    # What the rule predicts at 6 nodes (p = 0.75 each in round 0; the first round needs
    # quorum + 1 spare = 4 members, else round 1 selects all 6): P(all 6) = P(<4 in round
    # 0) + P(6 in round 0) = 0.17 + 0.18 = 0.35, mean size 5.06. Bounds at about +3 sd
    # over 30 requests: a network that ran every request everywhere fails both.
    assert sum(sizes) / len(sizes) <= 5.5, sizes
    assert sum(1 for s in sizes if s == 6) <= 0.6 * len(sizes), sizes
    share = Counter(n for v in views for n in _committed(v))
    mean = sum(sizes) / len(six)
    print("share per node:", sorted(share.values()), "mean", mean)
    for d in six.values():
        assert mean / 2 <= share[d.node_id] <= 2 * mean, (dict(share), mean)
        # Each node reports its own share on /v1/node (the dashboard shows it).
        def closed_all(d: Daemon = d) -> bool:
            s = d.get("/v1/node").json()["committee"]
            return s["ran"] + s["not_selected"] >= REQUESTS

        d.wait_for(closed_all, 60, "every request closed")
        mine = d.get("/v1/node").json()["committee"]
        assert mine["enabled"] is True and mine["share"] is not None and 0.0 < mine["share"] <= 1.0, mine
    # a's view of each request: all 6 eligible. One run
    # under load saw a view with 2 eligible nodes (peers expired after 30 s without a
    # heartbeat came back without their models until the next peer_info; the peer table
    # now remembers them), so a rare short view is tolerated and printed, not hidden.
    full = [v["committee"] for v in views if v["committee"]["eligible"] == 6]
    print("views with fewer than 6 eligible:", [v["committee"] for v in views if v["committee"]["eligible"] != 6])
    assert len(full) >= 0.9 * len(views)
    for c in full:
        assert c["target"] == pytest.approx(4.5), c
    # Honest commits ignored by a: standing views differ between nodes (each counts the
    # passes it has finalized when the request opens, and a batch's last requests
    # finalize at different moments on each node), and at slack 1.1 a node whose own
    # view weighs it > 10% above a's view can select itself where a does not count it.
    # One CI run saw 1 such commit in about 150; the request still succeeded. A network
    # that ignored honest work wholesale fails this bound (and the mean-size bound).
    ignored = [c for c in full if c["ignored_commits"]]
    print("full views with ignored commits:", ignored)
    counted = sum(len(c["counted"]) for c in full)
    assert sum(c["ignored_commits"] for c in ignored) <= max(2, 0.03 * counted), ignored
    assert all(set(c["ignored_by_reason"]) <= {"not_in_committee"} for c in ignored), ignored


def test_commits_from_outside_the_committee_are_ignored_and_counted(six: dict[str, Daemon]) -> None:
    rogue = six["f"]
    rogue.stop()
    rogue.extra_env["RAKIS_SORTITION"] = "false"  # runs every request, claims no round
    rogue.start().wait_ready()
    a = six["a"]
    a.wait_for(lambda: rogue.peer_count() >= 5, 120, "rogue rejoined")
    # Requests whose first round is 0 and where the rogue's ticket is above 0.99. With
    # equal weights the rogue's round-0 probability is 0.75 (x 1.1 slack = 0.825). Views
    # differ (standing counts the passes each node saw), so the margin is wide: while the
    # rogue weighs no more than the others, even a view where one node weighs nothing
    # leaves it at 4.5 / 5 = 0.9 (x 1.1 = 0.99).
    ids = [d.node_id for d in six.values()]
    view = so.CommitteeView(dict.fromkeys(ids, 1.0), so.committee_target(QUORUM))
    rogue_key = bytes.fromhex(rogue.node_id)
    frames: list[bytes] = []
    for i in range(5000):
        frame = make_frame(f"rogue {i}", quorum=QUORUM, commit_window_ms=WINDOW_MS, max_tokens=4)
        rid = _rid(frame)
        if so.first_round(view, rid, QUORUM) == 0 and so.ticket(rid, rogue_key) > 0.99:
            frames.append(frame)
        if len(frames) == 2:
            break
    views = _run_batch({k: v for k, v in six.items() if k != "f"}, frames)
    for v in views:
        assert v["state"] == "succeeded"
        assert rogue.node_id not in v["committee"]["committee"]
        assert rogue.node_id not in _committed(v)  # the machine never counted it
        assert v["committee"]["ignored_commits"] >= 1, v["committee"]
        assert "not_in_committee" in v["committee"]["ignored_by_reason"]
    rogue.stop()
    rogue.extra_env.pop("RAKIS_SORTITION")
    rogue.start().wait_ready()


def test_stopped_committee_members_make_the_committee_widen(six: dict[str, Daemon]) -> None:
    ids = {name: d.node_id for name, d in six.items()}
    down = ("e", "f")
    # A request whose first-round committee (equal weights: every node is as fresh as
    # the others) is exactly 4 nodes including both stopped ones: 2 alive < quorum 3.
    view = so.CommitteeView(dict.fromkeys(ids.values(), 1.0), so.committee_target(QUORUM))
    for i in range(2000):
        frame = make_frame(f"widen {i}", quorum=QUORUM, commit_window_ms=WINDOW_MS, max_tokens=4)
        rid = _rid(frame)
        members = set(view.members(rid, so.first_round(view, rid, QUORUM)))
        if len(members) == QUORUM + 1 and {ids["e"], ids["f"]} <= members and ids["a"] in members:
            break
    else:
        pytest.skip("no suitable request id found")
    for name in down:
        six[name].stop()
    a = six["a"]
    rid = a.submit(frame)
    v = a.wait_final(rid)
    assert v["state"] == "succeeded", v.get("reason")
    committed = _committed(v)
    assert len(committed) >= QUORUM
    assert committed - members, (committed, members)  # someone outside round 1 ran it
    assert v["committee"]["ignored_commits"] == 0
    for name in down:
        six[name].start()
    for name in down:
        six[name].wait_ready()
