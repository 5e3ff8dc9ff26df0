"""DHT discovery: nodes that know only one bootstrap peer find and dial the others."""

from __future__ import annotations

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from node.identity import Identity
from node.p2p.discovery import dialable, topic_key
from tests.node.p2p.conftest import Net, new_node, run_trio, wait_until


def test_topic_key_is_a_sha256_multihash_per_topic():
    assert topic_key("rakis/1").startswith("1220") and len(topic_key("rakis/1")) == 68
    assert topic_key("rakis/1") != topic_key("other")


def test_wildcard_addresses_are_not_dialed():
    pid = ID.from_base58("12D3KooWEqF1ZPmBq1Qy9H8XBEWcfrbJJoW1JV9o5ogdQqr6WLF4")
    any_only = PeerInfo(pid, [multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/1")])
    assert dialable(any_only) is None
    mixed = PeerInfo(
        pid, [multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/1"), multiaddr.Multiaddr("/ip4/10.0.0.2/tcp/1")]
    )
    assert [str(a) for a in dialable(mixed).addrs] == ["/ip4/10.0.0.2/tcp/1"]


def test_star_bootstrap_becomes_a_full_mesh_through_the_dht():
    """Five nodes, each bootstrapped only to node 0, all connect to each other."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            first = await net.start(new_node(dht=True, dht_interval_s=0.5))
            boot = first.listen_multiaddrs()[0]
            nodes = [first]
            for _ in range(4):
                nodes.append(
                    await net.start(
                        new_node(Identity.generate(), dht=True, dht_interval_s=0.5, bootstrap=[boot])
                    )
                )

            def meshed() -> bool:
                return all(len(n.connected_peers()) >= 4 for n in nodes)

            await wait_until(meshed, timeout_s=30)
            for n in nodes:
                assert set(n.connected_peers()) == {m.peer_id for m in nodes if m is not n}
            await wait_until(lambda: all(len(n.topic_peers()) == 4 for n in nodes), timeout_s=15)
            # Signed peer_info announcements can complete the mesh before every node's
            # first DHT round (0.5 s in); each node still runs its lookups.
            assert all(n._discovery is not None for n in nodes)
            await wait_until(lambda: all(n._discovery.lookups > 0 for n in nodes), timeout_s=10)
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=60)
