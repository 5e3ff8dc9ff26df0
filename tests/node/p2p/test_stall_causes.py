"""The two library traps behind "outgoing gossip stopped reaching a peer" after a restart
with a frozen neighbour (see libp2p_compat.allow_redial / drop_stale_streams)."""

from __future__ import annotations

import trio

from node.p2p.libp2p_compat import drop_stale_streams, parse_peer_addr
from tests.node.p2p.conftest import Net, new_node, run_trio, wait_until


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
