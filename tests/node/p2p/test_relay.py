"""Circuit relay v2 with real libp2p hosts on 127.0.0.1 (node/p2p/relay.py).

A is a relay, B reserves a slot on A and announces its /p2p-circuit address, C knows
only that address: C reaches B through A, and GossipSub runs over the relayed connection.
"""

from __future__ import annotations

import multiaddr
import pytest
import trio

from node.identity import Identity
from node.p2p.config import GossipConfig, local_config
from node.p2p.libp2p_compat import parse_peer_addr
from node.p2p.relay import RelayError, circuit_addr, is_circuit_addr, split_circuit_addr

from .conftest import Net, new_node, request_body, run_trio, wait_until

RELAY_ONLY_TOPIC = "relay-only"  # the relay gossips elsewhere, so it cannot carry our topic


def _relayed_conn_addrs(node, peer_id: str) -> list[str]:
    """Transport addresses of node's connections to peer_id (a relayed one names p2p-circuit)."""
    network = node.host.get_network()
    out = []
    for peer, conns in network.connections.items():
        if str(peer) != peer_id:
            continue
        for conn in conns if isinstance(conns, list) else [conns]:
            out += [str(a) for a in conn.get_transport_addresses()]
    return out


def test_gossip_crosses_a_relayed_connection_both_ways():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            relay = await net.start(new_node(relay_service=True, topic=RELAY_ONLY_TOPIC))
            relay_addr = relay.listen_multiaddrs()[0]
            hidden = await net.start(new_node(relays=[relay_addr]))
            await wait_until(lambda: hidden.circuit_multiaddrs() != [])
            circuit = circuit_addr(relay_addr, hidden.peer_id)
            # It announces the circuit address, not its own listen address.
            assert hidden.announce_multiaddrs() == [circuit]

            caller = await net.start(new_node())
            assert await caller.connect(circuit) == hidden.peer_id
            await caller.wait_for_topic_peers(1)
            await hidden.wait_for_topic_peers(1)
            # The connection between them runs through the relay.
            assert any("p2p-circuit" in a for a in _relayed_conn_addrs(caller, hidden.peer_id))
            assert hidden.peer_id in caller.topic_peers()
            assert relay.peer_id not in caller.topic_peers()  # the relay is not on our topic

            await caller.publish_body(request_body("caller->hidden"))
            await hidden.publish_body(request_body("hidden->caller"))
            await wait_until(lambda: "caller->hidden" in net.prompts(hidden))
            await wait_until(lambda: "hidden->caller" in net.prompts(caller))
            assert net.prompts(relay) == []
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_a_node_learns_a_relayed_peer_from_its_peer_info_and_dials_it():
    """C only bootstraps from A (a relay that also gossips); B can only be reached via A.
    B's signed peer_info names its circuit address, and C dials B through A."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            relay = await net.start(new_node(relay_service=True, info_interval_s=1.0))
            relay_addr = relay.listen_multiaddrs()[0]
            caller = await net.start(new_node(bootstrap=[relay_addr], info_interval_s=1.0))
            hidden = await net.start(new_node(relays=[relay_addr], info_interval_s=1.0))
            await wait_until(lambda: hidden.peer_id in caller.connected_peers(), timeout_s=20)
            assert any("p2p-circuit" in a for a in _relayed_conn_addrs(caller, hidden.peer_id))
            await wait_until(lambda: hidden.peer_id in caller.topic_peers())
            await hidden.publish_body(request_body("hidden"))
            await wait_until(lambda: "hidden" in net.prompts(caller) and "hidden" in net.prompts(relay))
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_dialing_a_peer_without_a_reservation_fails_cleanly():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            relay = await net.start(new_node(relay_service=True, topic=RELAY_ONLY_TOPIC))
            stranger = new_node()  # never started: holds no reservation anywhere
            caller = await net.start(new_node())
            from node.p2p.gossip import GossipError

            with pytest.raises(GossipError):
                await caller.connect(circuit_addr(relay.listen_multiaddrs()[0], stranger.peer_id))
            assert caller.counters.dial_failures == 1
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_a_node_that_is_no_relay_refuses_hop_requests():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            not_relay = await net.start(new_node(topic=RELAY_ONLY_TOPIC))
            hidden = await net.start(new_node(relays=[not_relay.listen_multiaddrs()[0]]))
            await trio.sleep(1.5)
            assert hidden.circuit_multiaddrs() == []
            assert hidden.announce_multiaddrs() == []
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_circuit_addresses_are_built_and_split():
    relay = new_node().peer_id
    target = new_node().peer_id
    addr = circuit_addr(f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}", target)
    assert addr == f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}"
    assert is_circuit_addr(addr) and not is_circuit_addr(f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}")
    info = parse_peer_addr(addr)  # libp2p strips the trailing /p2p/<target>
    assert str(info.peer_id) == target
    relay_info, full = split_circuit_addr(info.addrs[0], info.peer_id)
    assert str(relay_info.peer_id) == relay
    assert [str(a) for a in relay_info.addrs] == ["/ip4/10.0.0.1/tcp/4001"]
    assert str(full) == addr
    with pytest.raises(ValueError):
        circuit_addr("/ip4/10.0.0.1/tcp/4001", target)  # no relay peer id
    with pytest.raises(RelayError):  # the address names another target
        other = parse_peer_addr(f"/ip4/10.0.0.1/tcp/1/p2p/{relay}").peer_id
        split_circuit_addr(multiaddr.Multiaddr(addr), other)
    with pytest.raises(RelayError):  # not a circuit address at all
        split_circuit_addr(multiaddr.Multiaddr(f"/ip4/10.0.0.1/tcp/1/p2p/{relay}"), info.peer_id)


def test_relay_settings_are_checked():
    relay = new_node().peer_id
    target = new_node().peer_id
    ok = local_config(relays=[f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}"], relay_service=True)
    assert ok.relays == (f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}",) and ok.relay_service
    assert GossipConfig().relays == () and GossipConfig().relay_service is False
    with pytest.raises(ValueError):
        local_config(relays=f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}")  # one string, not a list
    with pytest.raises(ValueError):
        local_config(relays=["/ip4/10.0.0.1/tcp/4001"])  # no peer id
    with pytest.raises(ValueError):
        local_config(relays=[f"/ip4/10.0.0.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}"])


def test_settings_reach_the_gossip_config():
    from node.config import Settings
    from node.p2p.config import config_from_settings

    relay = Identity.generate()
    addr = f"/ip4/10.0.0.1/tcp/4001/p2p/{new_node(relay).peer_id}"
    settings = Settings(relay_service=True, relays=[addr], mdns=False)
    cfg = config_from_settings(settings)
    assert cfg.relay_service is True and cfg.relays == (addr,)


def test_a_testnet_refuses_relayed_nodes_without_namespaces(tmp_path):
    from node.testnet import Testnet, TestnetError

    net = Testnet(tmp_path / "net")
    with pytest.raises(TestnetError, match="--netns"):
        net.up(3, relayed=(2,))
    with pytest.raises(TestnetError, match="node-1"):
        net.up(3, netns=True, relayed=(0,))  # node-0 is the relay itself
    assert net.nodes() == []  # nothing was planned or started


def test_the_reservation_is_renewed_after_the_relay_connection_is_lost():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            relay = await net.start(new_node(relay_service=True, topic=RELAY_ONLY_TOPIC))
            relay_addr = relay.listen_multiaddrs()[0]
            hidden = await net.start(new_node(relays=[relay_addr]))
            client = hidden._relay_client
            await wait_until(lambda: client.reservations == 1)
            await trio.sleep(1.0)
            assert client.reservations == 1  # not renewed while the connection holds
            await hidden.host.disconnect(relay.host.get_id())
            # The relay is redialed like a bootstrap peer and reserved on again.
            await wait_until(lambda: client.reservations >= 2 and hidden.circuit_multiaddrs() != [])
            caller = await net.start(new_node())
            await caller.connect(circuit_addr(relay_addr, hidden.peer_id))
            await caller.wait_for_topic_peers(1)
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_a_relayed_node_announces_its_circuit_and_announce_addrs_only():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            relay = await net.start(new_node(relay_service=True, topic=RELAY_ONLY_TOPIC))
            relay_addr = relay.listen_multiaddrs()[0]
            hidden = await net.start(new_node(relays=[relay_addr], announce_addrs=["/ip4/203.0.113.7/tcp/4001"]))
            await wait_until(lambda: hidden.circuit_multiaddrs() != [])
            assert hidden.announce_multiaddrs() == [
                circuit_addr(relay_addr, hidden.peer_id),
                f"/ip4/203.0.113.7/tcp/4001/p2p/{hidden.peer_id}",
            ]
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_a_circuit_address_heard_in_peer_info_is_dialed_only_through_a_connected_relay():
    """C hears B's peer_info through M but is not connected to B's relay R: C must not
    dial R on B's word. Once C is connected to R, it reaches B through it."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            relay = await net.start(new_node(relay_service=True, topic=RELAY_ONLY_TOPIC))
            relay_addr = relay.listen_multiaddrs()[0]
            middle = await net.start(new_node(info_interval_s=1.0))
            hidden = await net.start(new_node(relays=[relay_addr], info_interval_s=1.0))
            await wait_until(lambda: hidden.circuit_multiaddrs() != [])
            caller = await net.start(new_node(info_interval_s=1.0))
            await hidden.connect(middle.listen_multiaddrs()[0])
            await caller.connect(middle.listen_multiaddrs()[0])

            def heard() -> bool:
                rec = {p.node_id: p for p in caller.peers()}.get(hidden.node_id)
                return rec is not None and any("p2p-circuit" in a for a in rec.announce_addrs)

            await wait_until(heard)
            await trio.sleep(2.5)  # two more peer_info rounds
            assert relay.peer_id not in caller.connected_peers()
            assert hidden.peer_id not in caller.connected_peers()

            await caller.connect(relay_addr)
            await wait_until(lambda: hidden.peer_id in caller.connected_peers())
            assert any("p2p-circuit" in a for a in _relayed_conn_addrs(caller, hidden.peer_id))
            nursery.cancel_scope.cancel()

    run_trio(body)
