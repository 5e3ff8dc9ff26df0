"""Gossip building blocks without a network: limits, penalties, peer table, config, ids,
and publish-side checks on one running node."""

from __future__ import annotations

import pytest
import trio

from node import wire
from node.identity import Identity
from node.p2p.config import GossipConfig, config_from_settings, local_config
from node.p2p.gossip import GossipError, GossipNode
from node.p2p.libp2p_compat import AddressError, key_pair_from_seed, parse_peer_id, peer_id_from_node_id
from node.p2p.peers import PeerTable
from node.p2p.ratelimit import KeyedRateLimiter, PenaltyBox, TokenBucket

from .conftest import Net, new_node, request_body, run_trio, wait_until


def test_token_bucket_allows_burst_then_rate():
    b = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [b.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.allow(0.5) and not b.allow(0.5)  # 0.5 s at 2/s refills one token


def test_keyed_limiter_is_per_key_and_bounded():
    lim = KeyedRateLimiter(rate=1.0, burst=1.0, max_keys=2)
    assert lim.allow("a", 0.0) and not lim.allow("a", 0.0)
    assert lim.allow("b", 0.0)
    assert lim.allow("c", 0.0)
    assert len(lim) == 2  # "a" evicted, memory stays bounded
    with pytest.raises(ValueError, match="rate limiter"):
        KeyedRateLimiter(rate=0, burst=1)


def test_penalty_box_decays_bans_and_expires():
    box = PenaltyBox(threshold=30.0, half_life_s=10.0, ban_s=5.0)
    assert not box.add("p", 20.0, now=0.0)
    assert box.points("p", now=10.0) == pytest.approx(10.0)  # one half-life later
    assert not box.add("p", 15.0, now=10.0)  # 25 < 30: slow offenders are not banned
    assert box.add("p", 10.0, now=10.0)  # 35 >= 30
    assert box.is_banned("p", now=12.0) and box.banned(12.0) == ["p"]
    assert box.expire(now=16.0) == ["p"] and not box.is_banned("p", now=16.0)
    assert box.points("p", now=16.0) == 0.0  # starts clean after the ban


def _signed(body, identity, ts_ms=None):
    return wire.decode(wire.encode(body, identity.signing_key, ts_ms=ts_ms))


def test_peer_table_from_heartbeats_and_expiry():
    clock = [100.0]
    me, other = Identity.generate(), Identity.generate()
    table = PeerTable(
        5.0, self_node_id=me.node_id, peer_id_of=lambda n: "pid-" + n[:4], mono=lambda: clock[0]
    )
    assert table.observe(_signed(wire.PeerStatus(load=0.5, queue_depth=2, tokens_per_s=9.0), me)) is None
    assert table.observe(_signed(request_body("not a node"), other)) is None  # clients aren't peers
    rec = table.observe(_signed(wire.PeerStatus(load=0.5, queue_depth=2, tokens_per_s=9.0), other))
    assert (
        rec is not None
        and rec.load == 0.5
        and rec.models is None
        and rec.peer_id == "pid-" + other.node_id[:4]
    )
    info = wire.PeerInfo(models=["a"], embedding_models=["e"], workers={"a": 2}, device="cpu", version="1")
    rec = table.observe(_signed(info, other))
    assert rec.models == ("a",) and rec.workers == {"a": 2} and rec.load == 0.5
    # an older status arriving late does not overwrite a newer one
    stale = _signed(
        wire.PeerStatus(load=9.0, queue_depth=9, tokens_per_s=0.0), other, ts_ms=rec.last_status_ts_ms - 1
    )
    assert table.observe(stale).load == 0.5
    assert rec.as_dict()["models"] == ["a"]
    clock[0] += 4.0
    assert table.expire() == [] and len(table) == 1
    clock[0] += 2.0
    assert table.expire() == [other.node_id] and len(table) == 0
    # Heard again after expiry: what it announced and its first sighting come back at
    # once (a committee view built before its next peer_info still counts it).
    back = table.observe(_signed(wire.PeerStatus(load=0.1, queue_depth=0, tokens_per_s=1.0), other))
    assert back.models == ("a",) and back.workers == {"a": 2} and back.load == 0.1
    assert back.first_seen_ms == rec.first_seen_ms and len(table) == 1


def test_peer_table_remembers_a_bounded_number_of_departed_peers():
    clock = [0.0]
    table = PeerTable(1.0, mono=lambda: clock[0], remember_departed=2)
    info = wire.PeerInfo(models=["a"], embedding_models=[], workers={"a": 1}, device="cpu", version="1")
    peers = [Identity.generate() for _ in range(3)]
    for p in peers:
        table.observe(_signed(info, p))
    clock[0] += 2.0
    assert len(table.expire()) == 3
    status = wire.PeerStatus(load=0.0, queue_depth=0, tokens_per_s=0.0)
    assert [table.observe(_signed(status, p)).models for p in peers] == [None, ("a",), ("a",)]


def test_config_rejects_bad_input_with_clear_errors():
    with pytest.raises(AddressError, match="bad listen multiaddr"):
        GossipConfig(listen_addrs=("not-an-addr",))
    with pytest.raises(AddressError, match="/p2p/"):
        GossipConfig(bootstrap=("/ip4/127.0.0.1/tcp/4001",))  # no peer id: cannot be dialed
    with pytest.raises(ValueError, match="list of multiaddrs"):
        GossipConfig(listen_addrs="/ip4/127.0.0.1/tcp/0")
    with pytest.raises(ValueError, match="heartbeat_s must be positive"):
        GossipConfig(heartbeat_s=0)
    with pytest.raises(TypeError, match="unknown gossip setting"):
        GossipNode(Identity.generate(), local_config(), heartbeat=1)


def test_config_from_daemon_settings():
    from node.config import Settings

    s = Settings(
        listen_addrs=["/ip4/127.0.0.1/tcp/0"], mdns=False, rate_limit_per_peer=7.0, rate_limit_burst=9
    )
    cfg = config_from_settings(s, heartbeat_s=0.5)
    assert cfg.listen_addrs == ("/ip4/127.0.0.1/tcp/0",) and cfg.mdns is False
    assert cfg.sender_rate == 7.0 and cfg.sender_burst == 9 and cfg.peer_rate >= 1000
    assert cfg.limits == s.wire and cfg.heartbeat_s == 0.5


def test_libp2p_peer_id_comes_from_the_node_key():
    ident = Identity.generate()
    node = GossipNode(ident, local_config())
    kp = key_pair_from_seed(ident.seed)
    assert kp.public_key.to_bytes() == ident.public_key
    assert node.peer_id == str(peer_id_from_node_id(ident.node_id))
    assert parse_peer_id(ident.node_id) == parse_peer_id(node.peer_id)
    with pytest.raises(ValueError, match="not a libp2p peer id"):
        parse_peer_id("nope")


def test_publish_refuses_invalid_or_already_seen_frames_and_requires_running():
    async def body():
        node = new_node()
        with pytest.raises(GossipError, match="not running"):
            await node.publish(b"x")
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            await net.start(node)
            assert node.listen_multiaddrs()[0].startswith("/ip4/127.0.0.1/tcp/")
            with pytest.raises(wire.WireError) as err:
                await node.publish(b"\x93garbage")
            assert err.value.reason in (wire.WireReason.MALFORMED, wire.WireReason.TRUNCATED)
            frame = wire.encode(request_body("once"), Identity.generate().signing_key)  # a client's frame
            packet = await node.publish(frame)
            assert packet.body.prompt == "once"
            with pytest.raises(wire.WireError) as err:
                await node.publish(frame)
            assert err.value.reason is wire.WireReason.REPLAY
            old = wire.encode(request_body("old"), node.identity.signing_key, ts_ms=1_000)
            with pytest.raises(wire.WireError) as err:
                await node.publish(old)
            assert err.value.reason is wire.WireReason.CLOCK_SKEW
            with pytest.raises(GossipError, match="own peer id"):
                await node.connect(node.listen_multiaddrs()[0])
            with pytest.raises(GossipError, match="failed|timed out"):
                await node.connect(
                    "/ip4/127.0.0.1/tcp/1/p2p/" + str(peer_id_from_node_id(Identity.generate().node_id))
                )
            assert node.counters.frames_out >= 1 and node.counters.own_rejected[wire.WireReason.REPLAY] == 1
            nursery.cancel_scope.cancel()
        assert not node.is_running

    run_trio(body)


def test_running_context_manager_and_restart_of_same_object():
    async def body():
        node = new_node()
        async with node.running():
            first = node.listen_multiaddrs()
            assert node.is_running and first
        assert not node.is_running and node.listen_multiaddrs() == []
        async with node.running():  # the same object can run again
            assert node.is_running

    run_trio(body)


def test_deliver_own_and_async_status_provider():
    async def status():
        await trio.sleep(0)
        return wire.PeerStatus(load=7.0, queue_depth=1, tokens_per_s=0.0)

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = new_node(deliver_own=True, status_interval_s=0.2)
            a.status_provider = status
            await net.start(a)
            b = await net.start(new_node())
            await a.connect(b.listen_multiaddrs()[0])
            await a.wait_for_topic_peers(1)
            await a.publish_body(request_body("mine"))
            await wait_until(lambda: "mine" in net.prompts(a))  # our own, echoed to our queue
            await wait_until(lambda: any(r.load == 7.0 for r in b.peers()))
            assert a.counters.heartbeat_errors == 0
            nursery.cancel_scope.cancel()

    run_trio(body)
