"""Packet fuzzing through gossip: a real libp2p peer publishes >= 10,000 invalid frames.

Topology: attacker - victim - honest (real GossipSub hosts on 127.0.0.1). The attacker's
pubsub has no validator, so whatever it publishes leaves it. The victim must reject
every fuzzed frame, relay none of them to `honest`, keep its memory bounded, and keep
delivering the honest traffic that flows in both directions during the attack.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trio

from node import wire
from node.p2p.gossip import PEER_RATE_LIMITED
from tests.node.p2p.conftest import Net, line, new_node, run_trio, wait_until

from .conftest import FrameMutator, request_body

pytestmark = pytest.mark.timeout(240)

N_FUZZ = int(os.environ.get("RAKIS_FUZZ_FRAMES", "10000"))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _paced_publish(raw, topic: str, frame: bytes, peer) -> None:
    """Publish without overrunning py-libp2p's per-peer outbound queue, which silently
    drops RPCs when full (a flooding attacker gains nothing by overrunning its own queue)."""
    queue = raw.peer_queues.get(peer)
    while queue is not None and len(queue) > 16:
        await trio.sleep(0.001)
    await raw.publish(topic, frame)


def test_ten_thousand_fuzzed_frames_are_rejected_and_never_relayed():
    assert N_FUZZ >= 10_000 or "RAKIS_FUZZ_FRAMES" in os.environ

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            attacker = await net.start(new_node(), collect=False)
            # Never ban, never rate-limit: every fuzzed frame must reach the wire decoder
            # (the default ban is tested below).
            victim = await net.start(
                new_node(ban_threshold=1e12, peer_rate=1e6, peer_burst=1e6, libp2p_topic_rate=1e6)
            )
            honest = await net.start(new_node())
            await line(net, [attacker, victim, honest])
            # libp2p's own peer scoring would start dropping the attacker silently after a
            # few dozen invalid messages; switch it off on the victim so that every fuzzed
            # frame reaches our validator and the wire decoder (the real defence).
            victim._router.scorer = None
            raw = attacker._pubsub
            raw.remove_topic_validator(attacker.config.topic)
            topic = attacker.config.topic
            victim_id = victim._libp2p_id
            mutator = FrameMutator(seed=1234, signer=attacker.identity)
            frames = [mutator.frame() for _ in range(N_FUZZ)]

            rss_before = _rss_bytes()
            sent_honest: list[str] = []

            async def honest_traffic() -> None:
                # Requests in both directions while the fuzzing runs.
                i = 0
                while len(sent_honest) < 20:
                    src = honest if i % 2 == 0 else victim
                    tag = f"honest-{i}"
                    await src.publish_body(request_body(tag))
                    sent_honest.append(tag)
                    i += 1
                    await trio.sleep(0.1)

            nursery.start_soon(honest_traffic)
            for frame in frames:
                await _paced_publish(raw, topic, frame, victim_id)

            def all_seen() -> bool:
                return sum(victim.counters.rejected.values()) >= N_FUZZ and len(sent_honest) >= 20

            await wait_until(all_seen, timeout_s=120)
            await trio.sleep(1.5)  # any wrongly relayed frame would reach `honest` by now
            rss_growth = _rss_bytes() - rss_before

            rejected = victim.counters.rejected
            assert sum(rejected.values()) == N_FUZZ, rejected
            assert victim.is_running and victim.connected_peers()
            # A spread of reasons shows the fuzz reached every layer of the decoder.
            for reason in ("bad_signature", "malformed", "schema", "clock_skew", "truncated"):
                assert rejected[reason] > 0, (reason, rejected)
            # Relayed none: `honest` never saw an invalid frame.
            assert not honest.counters.rejected, honest.counters.rejected
            # Honest traffic got through, exactly once, both ways.
            from_honest = {t for i, t in enumerate(sent_honest) if i % 2 == 0}
            from_victim = {t for i, t in enumerate(sent_honest) if i % 2 == 1}
            await wait_until(
                lambda: from_honest <= set(net.prompts(victim)) and from_victim <= set(net.prompts(honest))
            )
            for node, expected in ((victim, from_honest), (honest, from_victim)):
                counts = Counter(p for p in net.prompts(node) if p.startswith("honest-"))
                assert set(counts) == expected and all(c == 1 for c in counts.values()), counts
            # Bounded memory: the validator's hand-off map and the replay cache hold only
            # valid packets; the process did not grow by anything like the attack volume.
            assert len(victim._validated) <= 1024
            assert len(victim._seen) < 500
            assert rss_growth < 96 * 1024 * 1024, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=220)


def test_fuzzing_peer_is_banned_with_default_settings_and_honest_peers_are_not():
    """With default penalties a peer sending garbage is banned after a handful of frames,
    hung up on, and cannot come back; a third node keeps talking to the victim."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            attacker = await net.start(new_node(), collect=False)
            victim = await net.start(new_node())
            honest = await net.start(new_node())
            await attacker.connect(victim.listen_multiaddrs()[0])
            await honest.connect(victim.listen_multiaddrs()[0])
            await victim.wait_for_topic_peers(2)
            await attacker.wait_for_topic_peers(1)
            raw = attacker._pubsub
            raw.remove_topic_validator(attacker.config.topic)
            mutator = FrameMutator(seed=99, signer=attacker.identity)
            for _ in range(200):
                try:
                    await raw.publish(attacker.config.topic, mutator.frame())
                except Exception:  # noqa: BLE001 - the victim hung up on us: expected
                    break
            attacker_pid = attacker.peer_id
            await wait_until(lambda: attacker_pid in victim.banned_peers())
            await wait_until(lambda: attacker_pid not in victim.connected_peers())
            assert victim.counters.bans >= 1
            assert honest.peer_id not in victim.banned_peers()
            # A banned peer that redials gets nothing through: even a valid frame from it
            # is dropped, and the victim hangs up on it again.
            try:
                await attacker.connect(victim.listen_multiaddrs()[0])
                await raw.publish(
                    attacker.config.topic,
                    wire.encode(request_body("from-banned"), attacker.identity.signing_key),
                )
            except Exception:  # noqa: BLE001 - refused is fine too
                pass
            await wait_until(lambda: attacker_pid not in victim.connected_peers(), timeout_s=10)
            assert "from-banned" not in net.prompts(victim)
            # The honest peer's traffic still flows.
            await honest.publish_body(request_body("still-here"))
            await wait_until(lambda: "still-here" in net.prompts(victim))
            assert PEER_RATE_LIMITED not in honest.counters.rejected
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=90)


def test_every_fuzzed_frame_is_refused_by_the_decoder_without_other_exceptions():
    """The same generator straight into `wire.decode` (fast, many more cases): only
    WireError ever comes out."""
    key = __import__("node.identity", fromlist=["Identity"]).Identity.generate()
    mutator = FrameMutator(seed=7, signer=key)
    reasons: Counter[str] = Counter()
    seen = wire.SeenCache(1000)
    for _ in range(5000):
        try:
            wire.decode(mutator.frame(), seen=seen)
        except wire.WireError as err:
            reasons[err.reason.value] += 1
    assert sum(reasons.values()) == 5000
    assert len(seen) == 0
