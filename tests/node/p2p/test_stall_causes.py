"""The library traps behind "outgoing gossip stopped reaching a peer" after a restart
(see libp2p_compat.allow_redial / drop_stale_streams / first_seqno). The last one was the
stall itself: a restarted node reused message ids its peers had already seen. And the
5 s stall of a connection after each DHT provider announcement
(libp2p_compat._read_add_provider_echo)."""

from __future__ import annotations

import time

import trio

from node.identity import Identity
from node.p2p.libp2p_compat import drop_stale_streams, first_seqno, parse_peer_addr
from tests.node.p2p.conftest import Net, new_node, request_body, run_trio, wait_until


def test_a_failed_dial_does_not_block_the_next_one():
    """The swarm's 60 s negative cache would refuse every dial for a minute after one
    failed; our dials clear it, so a peer that comes back is reached at once."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node())
            b = new_node()
            await net.start(b)
            addr = b.listen_multiaddrs()[0]
            swarm = a.host.get_network()
            swarm._negative_peer_cache.mark_failed(
                str(parse_peer_addr(addr).peer_id)
            )  # as after a failed dial
            await a.connect(addr)
            assert b.peer_id in a.connected_peers()
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_a_pubsub_stream_left_on_a_closed_connection_is_replaced():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node())
            b = await net.start(new_node())
            await a.connect(b.listen_multiaddrs()[0])
            await a.wait_for_topic_peers(1)
            pubsub = a._pubsub
            peer = next(iter(pubsub.peers))

            class Closed:
                is_closed = True

            class DeadStream:
                muxed_conn = Closed()

            live = pubsub.peers[peer]
            pubsub.peers[peer] = DeadStream()  # what a restart race leaves behind
            assert drop_stale_streams(pubsub, {peer}) == [peer]
            assert peer not in pubsub.peers or pubsub.peers[peer] is not live
            # pubsub re-opens a stream on the live connection: gossip flows again.
            await wait_until(lambda: peer in pubsub.peers and not isinstance(pubsub.peers[peer], DeadStream))
            assert drop_stale_streams(pubsub, {peer}) == []
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_a_restarted_node_that_was_busy_is_heard_at_once():
    """py-libp2p numbers messages from the start time in whole seconds; a node that sent
    more messages than the seconds it lived restarted with message ids its peers had
    seen, and they dropped everything it said as duplicates (the restart stall). Message
    numbers now start from nanoseconds."""
    assert abs(first_seqno() - time.time_ns()) < 10**9

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            ids = [Identity.generate() for _ in range(3)]
            a = await net.start(new_node(ids[0]))
            b = await net.start(new_node(ids[1], bootstrap=[a.listen_multiaddrs()[0]]))
            c = await net.start(new_node(ids[2], bootstrap=[a.listen_multiaddrs()[0], b.listen_multiaddrs()[0]]))
            await wait_until(lambda: all(len(n.topic_peers()) >= 2 for n in (a, b, c)), timeout_s=30)
            for k in range(200):  # a busy first life: far more messages than seconds lived
                await c.publish_body(request_body(f"early-{k}"))
            await wait_until(lambda: all("early-199" in net.prompts(n) for n in (a, b)), timeout_s=30)
            port = c.listen_multiaddrs()[0].split("/")[4]
            await net.stop(c)
            c2 = new_node(
                ids[2],
                listen_addrs=[f"/ip4/127.0.0.1/tcp/{port}"],
                bootstrap=[a.listen_multiaddrs()[0], b.listen_multiaddrs()[0]],
            )
            await net.start(c2)
            await wait_until(lambda: len(c2.topic_peers()) >= 2, timeout_s=30)
            await c2.publish_body(request_body("after-restart"))
            await wait_until(lambda: all("after-restart" in net.prompts(n) for n in (a, b)), timeout_s=10)
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=90)


def test_a_provider_announcement_does_not_stall_the_connection():
    """py-libp2p's DHT client never read the receiver's echo of ADD_PROVIDER, and mplex
    then held the whole connection's incoming side for 5 s before resetting that stream:
    after every DHT round, frames from the peer (gossip, and the relayed connections a
    relay carries) arrived 5 s late. Now the echo is read and frames pass at once."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node(dht=True, dht_interval_s=3600))  # rounds by hand only
            b = await net.start(new_node(dht=True, dht_interval_s=3600))
            await a.connect(b.listen_multiaddrs()[0])
            await a.wait_for_topic_peers(1)
            await b.wait_for_topic_peers(1)
            discovery = a._discovery
            assert discovery is not None
            for k in range(3):
                assert await discovery.dht.provide(discovery.key)  # announced to b, which echoes
                await trio.sleep(0.2)  # the echo is on its way back
                await b.publish_body(request_body(f"after-provide-{k}"))
                # The stall was 5 s (mplex's RECEIVE_TIMEOUT_SECS); 2 s leaves room for a slow machine.
                await wait_until(lambda k=k: f"after-provide-{k}" in net.prompts(a), timeout_s=2)
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=60)
