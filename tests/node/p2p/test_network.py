"""Multi-node gossip behaviour with real libp2p hosts on 127.0.0.1."""

from __future__ import annotations

from collections import Counter

import trio

from node import wire
from node.identity import Identity

from .conftest import Net, line, new_node, request_body, run_trio, wait_until


def test_line_of_five_delivers_every_message_exactly_once():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            nodes = [await net.start(new_node()) for _ in range(5)]
            await line(net, nodes)
            for i, node in enumerate(nodes):
                await node.publish_body(request_body(f"from-{i}"))
            expected = {i: {f"from-{j}" for j in range(5) if j != i} for i in range(5)}
            await wait_until(lambda: all(set(net.prompts(n)) == expected[i] for i, n in enumerate(nodes)))
            await trio.sleep(1.5)  # gossip rounds (IHAVE/IWANT) must not deliver duplicates later
            for i, node in enumerate(nodes):
                counts = Counter(net.prompts(node))
                assert set(counts) == expected[i], (i, counts)
                assert all(c == 1 for c in counts.values()), (i, counts)
                assert not node.counters.rejected, node.counters.rejected
                assert node.counters.queue_overflow == 0
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_invalid_frames_injected_at_one_end_reach_no_other_node():
    """attacker - a - b - c: the attacker's pubsub has no validator, so bad frames leave it;
    `a` must drop them and relay nothing."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            attacker = await net.start(new_node())
            a, b, c = [await net.start(new_node()) for _ in range(3)]
            await line(net, [attacker, a, b, c])
            raw = attacker._pubsub
            raw.remove_topic_validator(attacker.config.topic)

            # Sanity: the attacker's raw path works, so "not relayed" below is not vacuous.
            good = wire.encode(request_body("good"), attacker.identity.signing_key)
            await raw.publish(attacker.config.topic, good)
            await wait_until(lambda: "good" in net.prompts(c))

            victim_key = b.identity.signing_key
            forged = bytearray(wire.encode(request_body("forged"), victim_key))
            forged[-70] ^= 0x01  # flip a byte inside the payload: signature no longer matches
            big_limits = wire.WireLimits(max_frame_bytes=1024 * 1024, max_prompt_chars=1_000_000)
            oversized = wire.encode(
                request_body("x" * 300_000, big_limits), attacker.identity.signing_key, limits=big_limits
            )
            for frame in (bytes(forged), oversized, good):  # `good` again = a replay
                await raw.publish(attacker.config.topic, frame)

            await wait_until(
                lambda: (
                    a.counters.rejected[wire.WireReason.BAD_SIGNATURE] == 1
                    and a.counters.rejected[wire.WireReason.OVERSIZE] == 1
                    and a.counters.rejected[wire.WireReason.REPLAY] == 1
                )
            )
            await trio.sleep(1.5)  # give any wrongly relayed copy time to arrive
            for node in (a, b, c):
                assert net.prompts(node).count("good") == 1
                assert "forged" not in net.prompts(node)
                assert not any(p.startswith("xxx") for p in net.prompts(node))
            for node in (b, c):
                assert not node.counters.rejected, node.counters.rejected  # never even saw them
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_peer_sending_garbage_gets_banned_and_disconnected():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            attacker = await net.start(new_node())
            a = await net.start(new_node(ban_threshold=30.0))
            await line(net, [attacker, a])
            raw = attacker._pubsub
            raw.remove_topic_validator(attacker.config.topic)
            for i in range(4):  # 10 points per malformed frame (decaying): the 4th crosses 30
                await raw.publish(attacker.config.topic, b"\xc1garbage%d" % i)
            await wait_until(lambda: a.counters.bans == 1)
            assert attacker.peer_id in a.banned_peers()
            await wait_until(lambda: attacker.peer_id not in a.connected_peers())
            # A banned peer cannot simply dial back in and be heard.
            await attacker.connect(a.listen_multiaddrs()[0])
            await raw.publish(
                attacker.config.topic, wire.encode(request_body("after-ban"), attacker.identity.signing_key)
            )
            await trio.sleep(1.0)
            assert "after-ban" not in net.prompts(a)
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_stopped_node_restarts_and_rejoins_via_bootstrap_redial():
    """b keeps c as a bootstrap peer; c stops, restarts on the same port with the same
    key, and b redials it on its own; c then receives new messages from a."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            c_identity = Identity.generate()
            c = await net.start(new_node(c_identity))
            c_addr = c.listen_multiaddrs()[0]
            port = c_addr.split("/")[4]
            a = await net.start(new_node())
            b = await net.start(new_node(bootstrap=[c_addr]))
            await a.connect(b.listen_multiaddrs()[0])
            await wait_until(lambda: c.peer_id in b.topic_peers())
            await a.wait_for_topic_peers(1)
            await a.publish_body(request_body("before"))
            await wait_until(lambda: "before" in net.prompts(c))

            await net.stop(c)
            await wait_until(lambda: c.peer_id not in b.connected_peers())
            await a.publish_body(request_body("while-down"))
            await wait_until(lambda: "while-down" in net.prompts(b))

            c2 = new_node(c_identity, listen_addrs=[f"/ip4/127.0.0.1/tcp/{port}"])
            await net.start(c2)
            assert c2.peer_id == c.peer_id
            await wait_until(lambda: b.peer_id in c2.topic_peers())  # b redialed c
            await a.publish_body(request_body("after"))
            await wait_until(lambda: "after" in net.prompts(c2))
            await trio.sleep(0.5)
            # (libp2p replays its few-second message-cache window to a (re)joining peer, so
            # recent packets such as "while-down" may arrive too; the store dedups by id.)
            assert net.prompts(c2).count("after") == 1
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_split_network_halves_exchange_again_after_reconnect():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            nodes = [await net.start(new_node()) for _ in range(6)]
            left, right = nodes[:3], nodes[3:]
            await line(net, nodes)
            await nodes[0].publish_body(request_body("joined"))
            await wait_until(lambda: "joined" in net.prompts(nodes[5]))

            await nodes[2].disconnect(nodes[3].peer_id)
            await wait_until(lambda: nodes[3].peer_id not in nodes[2].topic_peers())
            await wait_until(lambda: nodes[2].peer_id not in nodes[3].topic_peers())
            await nodes[0].publish_body(request_body("split-left"))
            await nodes[5].publish_body(request_body("split-right"))
            await wait_until(
                lambda: "split-left" in net.prompts(left[2]) and "split-right" in net.prompts(right[0])
            )
            await trio.sleep(1.0)
            assert all("split-left" not in net.prompts(n) for n in right)
            assert all("split-right" not in net.prompts(n) for n in left)

            await nodes[2].connect(nodes[3].listen_multiaddrs()[0])
            await nodes[2].wait_for_topic_peers(2)
            await nodes[3].wait_for_topic_peers(2)
            await nodes[0].publish_body(request_body("healed-left"))
            await nodes[5].publish_body(request_body("healed-right"))
            await wait_until(
                lambda: (
                    all("healed-left" in net.prompts(n) for n in nodes[1:])
                    and all("healed-right" in net.prompts(n) for n in nodes[:5])
                )
            )
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_heartbeats_fill_every_peer_table_and_silent_peers_expire():
    def info_for(i):
        return lambda: wire.PeerInfo(
            models=[f"model-{i}"],
            embedding_models=["e"],
            workers={f"model-{i}": i + 1},
            device="cpu",
            version="t",
        )

    def status_for(i):
        return lambda: wire.PeerStatus(load=float(i), queue_depth=i, tokens_per_s=1.0)

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            nodes = []
            for i in range(4):
                node = new_node(status_interval_s=0.3, peer_expiry_s=1.5)
                node.peer_info_provider, node.status_provider = info_for(i), status_for(i)
                nodes.append(await net.start(node))
            await line(net, nodes)

            def tables_full() -> bool:
                for node in nodes:
                    recs = {r.node_id: r for r in node.peers()}
                    if set(recs) != {n.node_id for n in nodes if n is not node}:
                        return False
                    if any(r.models is None or r.load is None for r in recs.values()):
                        return False
                return True

            await wait_until(tables_full)
            rec = {r.node_id: r for r in nodes[0].peers()}[nodes[3].node_id]
            assert rec.models == ("model-3",) and rec.workers == {"model-3": 4}
            assert rec.load == 3.0 and rec.queue_depth == 3
            assert rec.peer_id == nodes[3].peer_id
            assert not rec.connected  # two hops away in the line
            assert {r.node_id: r for r in nodes[0].peers()}[nodes[1].node_id].connected

            await net.stop(nodes[3])
            await wait_until(lambda: nodes[3].node_id not in {r.node_id for r in nodes[0].peers()})
            assert nodes[2].node_id in {r.node_id for r in nodes[0].peers()}
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_sender_rate_limit_drops_excess_and_it_is_not_relayed():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node())
            b = await net.start(new_node(sender_rate=0.01, sender_burst=3.0))
            c = await net.start(new_node())
            await line(net, [a, b, c])
            await trio.sleep(0.5)
            seen_before = len(net.prompts(c))
            for i in range(6):
                await a.publish_body(request_body(f"burst-{i}"))
            await wait_until(lambda: b.counters.rejected["rate_limited"] >= 1)
            await trio.sleep(1.0)
            got = [p for p in net.prompts(c) if p.startswith("burst-")]
            assert len(got) < 6 and len(got) == len(net.prompts(c)) - seen_before
            assert b.counters.bans == 0  # relays are not punished for a sender's volume
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_queue_overflow_is_counted_not_fatal():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node())
            b = await net.start(new_node(queue_size=2), collect=False)  # nobody reads b's queue
            await line(net, [a, b])
            for i in range(8):
                await a.publish_body(request_body(f"q-{i}"))
            await wait_until(lambda: b.counters.accepted >= 8)
            assert b.counters.delivered == 2
            assert b.counters.queue_overflow == b.counters.accepted - 2
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_mdns_discovery_connects_nodes_on_the_lan():
    """mDNS is off in the other tests; here two nodes find each other with it alone."""

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a, b = [await net.start(new_node(mdns=True)) for _ in range(2)]
            await wait_until(
                lambda: b.peer_id in a.topic_peers() or a.peer_id in b.topic_peers(), timeout_s=15
            )
            await a.publish_body(request_body("via-mdns"))
            await wait_until(lambda: "via-mdns" in net.prompts(b))
            nursery.cancel_scope.cancel()

    run_trio(body)
