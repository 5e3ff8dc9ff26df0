"""Bans survive a restart: a peer banned for invalid frames, and a sender key banned for
failed re-checks, are still banned when the node comes back with the same store."""

from __future__ import annotations

import time

import trio

from node import wire
from node.identity import Identity
from node.p2p.bans import SenderPolicy
from node.p2p.config import local_config
from node.p2p.gossip import SENDER_BANNED, GossipNode
from node.p2p.libp2p_compat import parse_peer_id
from node.store import Store
from tests.node.p2p.conftest import request_body, run_trio, wait_until


def test_sender_policy_throttles_then_bans() -> None:
    policy = SenderPolicy(throttle_s=10.0, throttled_rate=1.0, throttled_burst=1.0)
    assert policy.allow("k", 0.0) and not policy.is_banned("k", 0.0)
    assert not policy.fail("k", 0.0)  # first failure: throttled, not banned
    assert policy.allow("k", 0.1) and not policy.allow("k", 0.2)  # a burst of 1 at 1 frame/s
    assert policy.allow("k", 20.0)  # throttle over
    assert not policy.fail("k", 21.0)
    assert policy.fail("k", 22.0)  # third failure in a short time: banned
    assert policy.is_banned("k", 23.0)


def test_a_throttled_key_keeps_an_honest_nodes_traffic_and_loses_a_flood() -> None:
    """One failed re-check must not take an honest node out of consensus: under the
    gossip node's throttle (a tenth of its sender limits) a node's ordinary minute passes
    whole (a peer_status every 2 s, and every 5 s a burst of 8 requests' commits, then
    their reveals), while a flood at the normal sender rate loses nine frames in ten."""
    cfg = local_config()
    policy = SenderPolicy(throttled_rate=cfg.sender_rate / 10, throttled_burst=cfg.sender_burst / 10)
    policy.fail("honest", 0.0)
    policy.fail("flooder", 0.0)
    ordinary = [t * 2.0 for t in range(30)]  # peer_status
    for start in range(0, 60, 5):
        ordinary += [start + 0.5] * 8 + [start + 2.5] * 8  # commits, then reveals
    assert all(policy.allow("honest", t) for t in sorted(ordinary))
    flood = [i / cfg.sender_rate for i in range(int(60 * cfg.sender_rate))]
    passed = sum(policy.allow("flooder", t) for t in flood)
    assert passed <= 0.1 * len(flood) + cfg.sender_burst / 10


def test_bans_are_kept_in_the_store_and_restored(tmp_path) -> None:
    store = Store(tmp_path)
    ident = Identity.generate()
    bad_peer = str(parse_peer_id(Identity.generate().node_id))
    liar = Identity.generate()

    first = GossipNode(ident, local_config(), ban_book=store)
    assert first._penalties.add(parse_peer_id(bad_peer), 1e9, time.monotonic())  # over the threshold
    first._ban(parse_peer_id(bad_peer))
    for _ in range(3):
        first.penalize_sender(liar.node_id, "failed_recheck")
    assert liar.node_id in first.banned_senders()
    assert set(store.active_bans("peer")) == {bad_peer}
    assert set(store.active_bans("sender")) == {liar.node_id}

    again = GossipNode(ident, local_config(), ban_book=store)  # a restart: same store
    assert bad_peer in again.banned_peers()
    assert liar.node_id in again.banned_senders()
    store.close()


def test_frames_signed_by_a_banned_sender_are_dropped_after_a_restart(tmp_path) -> None:
    store = Store(tmp_path)
    liar = Identity.generate()
    me = Identity.generate()
    before_restart = GossipNode(me, local_config(), ban_book=store)
    for _ in range(3):
        before_restart.penalize_sender(liar.node_id, "failed_recheck")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = GossipNode(me, local_config(), ban_book=store)
            relay = GossipNode(Identity.generate(), local_config())
            await nursery.start(node.run)
            await nursery.start(relay.run)
            await relay.connect(node.listen_multiaddrs()[0])
            await relay.wait_for_topic_peers(1)
            await node.wait_for_topic_peers(1)
            frame = wire.encode(request_body("from a banned key"), liar.signing_key)
            honest = wire.encode(request_body("from an honest key"), Identity.generate().signing_key)
            await relay.publish(frame)
            await relay.publish(honest)
            got = await _receive_one(node)
            assert got.body.prompt == "from an honest key"
            await wait_until(lambda: node.counters.rejected[SENDER_BANNED] == 1)
            nursery.cancel_scope.cancel()

    run_trio(main)
    store.close()


async def _receive_one(node: GossipNode) -> wire.SignedPacket:
    """The next inference request the node delivers (heartbeats are skipped)."""
    with trio.fail_after(10):
        while True:
            packet = await node.packets().receive()
            if packet.type is wire.PacketType.INFERENCE_REQUEST:
                return packet
