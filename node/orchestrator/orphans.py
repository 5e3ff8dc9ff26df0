"""Orphan packets: packets for request ids this node has not seen yet.

Gossip does not keep order, so a commit can overtake its request; such packets are
stored and replayed when the request arrives. Any peer could also send packets for
made-up ids to fill the disk, so they are kept only up to ``max_orphan_packets`` and
for ``orphan_packet_ttl_s``. The count is kept in memory (no COUNT(*) per packet),
set from the store at start and after every prune; drops are logged once per prune
interval, not once per packet. Interval times are trio's clock (``trio.current_time``).
"""

from __future__ import annotations

import math

import trio

from node import metrics, wire
from node.logs import get_logger
from node.store import Store

log = get_logger(__name__)

__all__ = ["OrphanPackets"]


class OrphanPackets:
    """Keeps, counts and prunes the store's orphan packets under a cap and a TTL."""

    def __init__(self, store: Store, *, ttl_s: float, max_packets: int, prune_interval_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.max_packets = max_packets
        self.prune_interval_s = prune_interval_s
        self._count = 0
        self._dropped_unlogged = 0
        self._dropped_total = 0
        self._drop_logged_at = -math.inf
        self._last_prune = -math.inf

    @property
    def count(self) -> int:
        """Orphan packets stored, as this node counts them (refreshed by each prune)."""
        return self._count

    def keep(self, pkt: wire.SignedPacket, rid: str) -> None:
        """Store a packet whose request is unknown here, unless the cap is reached."""
        if self._count >= self.max_packets:
            self._drop(pkt)
            return
        if self.store.add_packet(
            pkt.packet_id, request_id=rid, type=pkt.type.value, sender_id=pkt.sender_id, frame=pkt.frame
        ):
            self._count += 1
            metrics.ORPHAN_PACKETS.set(self._count)

    def _drop(self, pkt: wire.SignedPacket) -> None:
        metrics.ORPHAN_PACKETS_DROPPED.inc()
        self._dropped_unlogged += 1
        self._dropped_total += 1
        now = trio.current_time()
        if now - self._drop_logged_at >= self.prune_interval_s:
            log.warning(
                "orphan_packet_dropped",
                dropped=self._dropped_unlogged,
                dropped_total=self._dropped_total,
                orphans=self._count,
                max_orphan_packets=self.max_packets,
                packet_type=pkt.type.value,
            )
            self._drop_logged_at = now
            self._dropped_unlogged = 0

    def request_arrived(self) -> None:
        """A new request was stored: its early packets are no longer orphans. A count over
        the small partial index once per new request keeps the cap honest without
        waiting for a prune."""
        if self._count:
            self._recount()

    def prune_due(self) -> bool:
        """Whether a prune interval has passed since the last prune."""
        return trio.current_time() - self._last_prune >= self.prune_interval_s

    def prune(self) -> None:
        """Drop orphans past their TTL or over the cap, and re-read the true count
        (requests that arrived since turned some orphans into ordinary packets)."""
        self._last_prune = trio.current_time()
        deleted = self.store.prune_orphan_packets(
            max_age_ms=int(self.ttl_s * 1000), max_count=self.max_packets
        )
        self._recount()
        if deleted:
            metrics.ORPHAN_PACKETS_PRUNED.inc(deleted)
            log.info("orphan_packets_pruned", deleted=deleted, orphans=self._count)

    def _recount(self) -> None:
        self._count = self.store.count_orphan_packets()
        metrics.ORPHAN_PACKETS.set(self._count)
