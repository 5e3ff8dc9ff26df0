"""What a node serves from its store for history sync (`StoreHistory`, `Store.requests_since`)."""

from __future__ import annotations

import time

from node import wire
from node.identity import Identity
from node.p2p.sync import CERTIFICATE, PACKET, StoreHistory
from node.store import Store
from tests.node.p2p.conftest import request_body


def _add(store: Store, tag: str, ts_ms: int) -> wire.SignedPacket:
    pkt = wire.decode(
        wire.encode(request_body(tag), Identity.generate().signing_key, ts_ms=ts_ms), check_time=False
    )
    store.add_request(
        pkt.packet_id, pkt.frame, client_id=pkt.sender_id, created_at=pkt.ts_ms, ending_at=pkt.ts_ms + 60_000
    )
    return pkt


def test_history_serves_running_requests_with_packets_and_succeeded_ones_as_certificates(tmp_path):
    store = Store(tmp_path)
    try:
        now = time.time_ns() // 1_000_000
        old = _add(store, "old", now - 3_600_000)
        running = _add(store, "running", now - 1000)
        store.add_packet(
            "p1",
            request_id=running.packet_id,
            type="inference_commit",
            sender_id="ab" * 32,
            frame=b"commit-frame",
        )
        done = _add(store, "done", now - 2000)
        store.finish_request(
            done.packet_id, state="succeeded", reason=None, answer="a", members=[], certificate=b'{"c": 1}'
        )
        failed = _add(store, "failed", now - 3000)
        store.finish_request(failed.packet_id, state="failed", reason="x", answer=None, members=[])

        assert [r.request_id for r in store.requests_since(now - 600_000, 10)] == [
            running.packet_id,
            done.packet_id,
            failed.packet_id,
        ]
        src = StoreHistory(store)
        items = src.history(now - 600_000, set(), 100, 1 << 20)
        assert {"k": PACKET, "f": running.frame} in items and {"k": PACKET, "f": b"commit-frame"} in items
        assert {"k": CERTIFICATE, "c": b'{"c": 1}'} in items
        assert all(i.get("f") not in (old.frame, failed.frame) for i in items)  # too old; proves nothing
        assert src.final_ids(now - 600_000, 10) == [done.packet_id, failed.packet_id]
        # What the asker already has final is not served again; bounds hold.
        assert {"k": CERTIFICATE, "c": b'{"c": 1}'} not in src.history(
            now - 600_000, {done.packet_id}, 100, 1 << 20
        )
        assert len(src.history(now - 600_000, set(), 1, 1 << 20)) == 1
        assert src.history(now - 600_000, set(), 100, 10) == []
    finally:
        store.close()
