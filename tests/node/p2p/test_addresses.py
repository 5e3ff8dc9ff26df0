"""Dialable addresses: the wildcard is expanded, announce addresses win, every address
carries the peer id; a running node on 0.0.0.0 announces no 0.0.0.0 address."""

from __future__ import annotations

import trio

from node.identity import Identity
from node.p2p.addresses import dialable_addrs, interface_ipv4_addresses
from node.p2p.config import local_config
from node.p2p.gossip import GossipNode
from node.p2p.libp2p_compat import peer_id_from_public_key
from tests.node.p2p.conftest import run_trio

PEER = str(peer_id_from_public_key(Identity.from_seed(b"\x01" * 32).public_key))


def test_wildcard_is_expanded_into_interface_addresses() -> None:
    got = dialable_addrs(["/ip4/0.0.0.0/tcp/4001"], peer_id=PEER, interfaces=["192.0.2.7", "127.0.0.1"])
    assert got == [f"/ip4/192.0.2.7/tcp/4001/p2p/{PEER}", f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"]


def test_concrete_addresses_are_kept_and_announce_addresses_win() -> None:
    bound = [f"/ip4/198.18.0.1/tcp/4001/p2p/{PEER}"]
    assert dialable_addrs(bound, peer_id=PEER, interfaces=[]) == bound
    announced = dialable_addrs(bound, peer_id=PEER, announce=["/ip4/203.0.113.9/tcp/4001"])
    assert announced == [f"/ip4/203.0.113.9/tcp/4001/p2p/{PEER}"]


def test_interface_addresses_put_loopback_last() -> None:
    found = interface_ipv4_addresses()
    assert "127.0.0.1" in found
    assert all(not a.startswith("127.") for a in found[: found.index("127.0.0.1")])


def test_a_node_on_the_wildcard_announces_concrete_addresses() -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node = GossipNode(Identity.generate(), local_config(listen_addrs=("/ip4/0.0.0.0/tcp/0",)))
            await nursery.start(node.run)
            announced = node.announce_multiaddrs()
            assert announced and all("/ip4/0.0.0.0/" not in a for a in announced), announced
            assert all(a.endswith(f"/p2p/{node.peer_id}") for a in announced)
            port = node.listen_multiaddrs()[0].split("/tcp/")[1].split("/")[0]
            assert all(f"/tcp/{port}/" in a for a in announced)
            nursery.cancel_scope.cancel()

    run_trio(main)
