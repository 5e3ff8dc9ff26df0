"""Packet fuzzing against live daemons: several attacker peers (real libp2p hosts in this
process) spray mutated and random frames at one daemon of the three-node testnet while
an honest request is in flight. The daemon stays up with bounded memory, relays nothing
invalid (the other two daemons count no invalid frame), bans the attackers, and the
honest request reaches consensus on all three.

With default settings each attacker is banned after a handful of invalid frames, so the
volume here is modest; the 10,000-frame run against one gossip node with bans switched
off is `tests/adversarial/test_gossip_fuzz.py`."""

from __future__ import annotations

import re

import pytest
import trio

from node.identity import Identity
from tests.adversarial.conftest import FrameMutator
from tests.daemon_helpers import Daemon
from tests.node.p2p.conftest import new_node, run_trio

from .conftest import make_frame

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INVALID = ("malformed", "truncated", "bad_signature", "bad_key", "schema", "bad_version", "unknown_type")


def _rejected(d: Daemon) -> dict[str, float]:
    text = d.get("/metrics").text
    out: dict[str, float] = {}
    for reason, value in re.findall(
        r'^rakis_gossip_frames_rejected_total\{reason="([^"]+)"\} (\S+)$', text, re.M
    ):
        out[reason] = float(value)
    return out


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def test_fuzzing_attackers_cannot_stop_an_honest_request(trio_net):
    a, b, c = trio_net["a"], trio_net["b"], trio_net["c"]
    before = {n: _rejected(d) for n, d in (("a", a), ("b", b), ("c", c))}
    rss_before = _rss_kib(a.proc.pid)
    rid = b.submit(make_frame("Name a planet.", quorum=3, max_time_ms=120_000))
    sent = 0

    async def attack() -> None:
        nonlocal sent
        async with trio.open_nursery() as nursery:
            attackers = []
            for k in range(6):
                node = new_node(Identity.generate())
                await nursery.start(node.run)
                attackers.append((node, FrameMutator(seed=100 + k, signer=node.identity)))
            for node, _ in attackers:
                await node.connect(a.addr)
            for node, _ in attackers:
                with trio.move_on_after(10):
                    await node.wait_for_topic_peers(1)
                node._pubsub.remove_topic_validator(node.config.topic)
            for _ in range(300):
                for node, mutator in attackers:
                    if not node.topic_peers():
                        continue  # banned and hung up on
                    try:
                        await node._pubsub.publish(node.config.topic, mutator.frame())
                        sent += 1
                    except Exception:  # noqa: BLE001 - the daemon hung up on us
                        pass
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()

    run_trio(attack, timeout_s=120)
    assert sent >= 30, sent

    views = [d.wait_final(rid, 120) for d in (a, b, c)]
    for v in views:
        assert (v["state"], v["reason"]) == ("succeeded", None), v
    after = {n: _rejected(d) for n, d in (("a", a), ("b", b), ("c", c))}
    fuzz_rejected = sum(after["a"].get(r, 0) - before["a"].get(r, 0) for r in INVALID)
    assert fuzz_rejected >= 6, (before["a"], after["a"])  # every attacker got frames rejected
    for n in ("b", "c"):  # nothing invalid was relayed to the other daemons
        for r in INVALID:
            assert after[n].get(r, 0) == before[n].get(r, 0), (n, r, after[n])
    assert a.get("/healthz").status_code == 200
    assert _rss_kib(a.proc.pid) - rss_before < 200 * 1024
