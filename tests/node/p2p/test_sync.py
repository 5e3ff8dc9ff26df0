"""History sync over /rakis/sync/1 between two real libp2p hosts: what a peer serves is
verified like gossip; tampered, stale or junk items are rejected and cost the peer."""

from __future__ import annotations

import time
from typing import Any

import trio

from node import wire
from node.identity import Identity
from node.p2p.sync import CERTIFICATE, PACKET, STALE, SyncConfig, SyncService, check_packet
from tests.node.p2p.conftest import Net, new_node, request_body, run_trio, wait_until


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ListSource:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.asks: list[tuple[int, set[str]]] = []

    def history(self, since_ms, have, max_items, max_bytes):
        self.asks.append((since_ms, have))
        return self.items[:max_items]

    def final_ids(self, since_ms, limit):
        return []


def frame(tag: str, *, ts_ms: int | None = None) -> bytes:
    return wire.encode(request_body(tag), Identity.generate().signing_key, ts_ms=ts_ms)


def tampered(f: bytes) -> bytes:
    i = f.index(b"tag-good-2") if b"tag-good-2" in f else len(f) // 2
    return f[:i] + bytes([f[i] ^ 0x01]) + f[i + 1 :]


def test_check_packet_bounds_the_window():
    f = frame("x")
    assert check_packet(f, limits=wire.DEFAULT_LIMITS, window_ms=60_000, now_ms=now_ms()).body.prompt == "x"
    old = frame("old", ts_ms=now_ms() - 3_600_000 - wire.DEFAULT_LIMITS.max_time_ms)
    try:
        check_packet(old, limits=wire.DEFAULT_LIMITS, window_ms=600_000, now_ms=now_ms())
    except wire.WireError as e:
        assert e.reason is wire.WireReason.CLOCK_SKEW
    else:
        raise AssertionError("a packet older than the window was accepted")


def test_served_history_is_verified_and_bad_items_are_rejected_and_charged():
    good = [frame("tag-good-1"), frame("tag-good-2")]
    stale = frame("stale", ts_ms=now_ms() - 10_000_000)
    served = [
        {"k": PACKET, "f": good[0]},
        {"k": PACKET, "f": tampered(good[1])},  # a malicious server flipped one bit
        {"k": PACKET, "f": stale},
        {"k": "zz"},
        {"k": CERTIFICATE, "c": b"{not json"},
        {"k": PACKET, "f": good[1]},
    ]

    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            server_node = await net.start(new_node())
            client_node = await net.start(new_node())
            got: list[wire.SignedPacket] = []
            certs: list[Any] = []

            async def on_packet(pkt):
                got.append(pkt)

            async def on_cert(req, data):
                certs.append(data)
                return True

            server = SyncService(server_node, ListSource(served), on_packet=on_packet)
            client = SyncService(
                client_node,
                ListSource([]),
                on_packet=on_packet,
                on_certificate=on_cert,
                config=SyncConfig(window_s=60),
            )
            await nursery.start(server.run)
            await nursery.start(client.run)
            # Connecting is enough: the client asks each peer that joins the topic.
            await client_node.connect(server_node.listen_multiaddrs()[0])
            await wait_until(lambda: client.counters.asks_sent >= 1 and len(got) >= 2, timeout_s=15)
            await wait_until(lambda: sum(client.counters.rejected.values()) >= 4, timeout_s=5)
            assert sorted(p.body.prompt for p in got) == ["tag-good-1", "tag-good-2"]
            assert certs == []
            rejected = client.counters.rejected
            assert rejected[wire.WireReason.BAD_SIGNATURE.value] == 1, rejected
            assert rejected[STALE] == 1 and rejected["bad_item"] == 1 and rejected["malformed"] == 1, rejected
            assert server.counters.asks_served == 1
            assert client_node._penalties.points(server_node._libp2p_id, time.monotonic()) > 0
            nursery.cancel_scope.cancel()

    run_trio(body)


def test_asks_over_the_per_peer_rate_get_nothing():
    async def body():
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            a = await net.start(new_node())
            b = await net.start(new_node())
            got: list[Any] = []

            async def sink(pkt):
                got.append(pkt)

            server = SyncService(
                a,
                ListSource([{"k": PACKET, "f": frame("one")}]),
                on_packet=sink,
                config=SyncConfig(rate_per_min=2),
            )
            client = SyncService(b, ListSource([]), on_packet=sink)
            await nursery.start(server.run)
            await b.connect(a.listen_multiaddrs()[0])
            await b.wait_for_topic_peers(1)
            counts = [await client.ask(a._libp2p_id) for _ in range(4)]
            assert counts[:2] == [1, 1] and counts[2:] == [0, 0], counts
            assert server.counters.asks_refused == 2
            nursery.cancel_scope.cancel()

    run_trio(body)
