"""Table of known rakis peers, fed by their signed `peer_info` / `peer_status` packets.

Only those two packet types create entries: clients also sign packets (requests) but
are not nodes. Entries are keyed by node id (the sender's public key), which the
signature proves, rather than by the libp2p connection the packet arrived on, so a
peer relayed through others is known just the same. Silent peers expire.

An expired peer is remembered (bounded): when it is heard again its record comes back
with what it last announced (models, workers) and its first sighting. Otherwise a peer
whose heartbeats were late for a while (a busy machine) would return with no models
until its next ``peer_info`` (up to ``info_interval_s``), and committee views built in
that gap would leave it out; and its standing's age (first sighting) would restart.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from node.wire import PacketType, PeerInfo, PeerStatus, SignedPacket


@dataclass(frozen=True)
class PeerRecord:
    node_id: str
    peer_id: str  # libp2p peer id, derived from the same key
    addrs: tuple[str, ...] = ()
    # from peer_info (None until the first one arrives)
    models: tuple[str, ...] | None = None
    embedding_models: tuple[str, ...] | None = None
    workers: dict[str, int] = field(default_factory=dict)
    device: str | None = None
    version: str | None = None
    api_url: str | None = None
    announce_addrs: tuple[str, ...] = ()  # the dialable multiaddrs its peer_info names
    # from peer_status
    load: float | None = None
    queue_depth: int | None = None
    tokens_per_s: float | None = None
    busy_workers: int | None = None
    total_workers: int | None = None
    uptime_s: float | None = None
    # bookkeeping: wall-clock ms (for display); `seen_mono` (monotonic s) drives expiry
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    last_info_ts_ms: int | None = None
    last_status_ts_ms: int | None = None
    connected: bool = False
    seen_mono: float = 0.0

    def as_dict(self) -> dict[str, object]:
        """JSON-ready view for the HTTP API and dashboard."""
        d = {k: v for k, v in self.__dict__.items() if k != "seen_mono"}
        d["addrs"] = list(self.addrs)
        d["announce_addrs"] = list(self.announce_addrs)
        d["models"] = None if self.models is None else list(self.models)
        d["embedding_models"] = None if self.embedding_models is None else list(self.embedding_models)
        return d


class PeerTable:
    """Peers keyed by node id; expiry after `expiry_s` seconds without a heartbeat."""

    def __init__(
        self,
        expiry_s: float,
        *,
        self_node_id: str | None = None,
        peer_id_of: Callable[[str], str] | None = None,
        mono: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        remember_departed: int = 10_000,
    ) -> None:
        if expiry_s <= 0:
            raise ValueError(f"peer expiry must be positive, got {expiry_s}")
        self.expiry_s = expiry_s
        self._self = self_node_id
        self._peer_id_of = peer_id_of or (lambda node_id: "")
        self._mono = mono
        self._wall_ms = wall_ms
        self._peers: dict[str, PeerRecord] = {}
        self._departed: OrderedDict[str, PeerRecord] = OrderedDict()  # expired, newest last
        self._remember = remember_departed

    def observe(self, packet: SignedPacket) -> PeerRecord | None:
        """Update from a verified packet; returns the new record, or None if ignored."""
        if packet.type not in (PacketType.PEER_INFO, PacketType.PEER_STATUS):
            return None
        node_id = packet.sender_id
        if node_id == self._self:
            return None
        now_ms = self._wall_ms()
        old = self._peers.get(node_id)
        if old is None:
            old = self._departed.pop(node_id, None)
        if old is None:
            old = PeerRecord(node_id=node_id, peer_id=self._peer_id_of(node_id), first_seen_ms=now_ms)
        body = packet.body
        if isinstance(body, PeerInfo):
            if old.last_info_ts_ms is not None and packet.ts_ms < old.last_info_ts_ms:
                return old  # an older one arriving late must not overwrite a newer one
            new = replace(
                old,
                models=tuple(body.models),
                embedding_models=tuple(body.embedding_models),
                workers=dict(body.workers),
                device=body.device,
                version=body.version,
                api_url=body.api_url,
                announce_addrs=tuple(body.addrs),
                last_info_ts_ms=packet.ts_ms,
            )
        elif isinstance(body, PeerStatus):
            if old.last_status_ts_ms is not None and packet.ts_ms < old.last_status_ts_ms:
                return old
            new = replace(
                old,
                load=body.load,
                queue_depth=body.queue_depth,
                tokens_per_s=body.tokens_per_s,
                busy_workers=body.busy_workers,
                total_workers=body.total_workers,
                uptime_s=body.uptime_s,
                last_status_ts_ms=packet.ts_ms,
            )
        else:  # pragma: no cover - wire guarantees body type matches packet type
            return None
        new = replace(new, last_seen_ms=now_ms, seen_mono=self._mono())
        self._peers[node_id] = new
        return new

    def set_network(self, node_id: str, *, connected: bool, addrs: tuple[str, ...] | None = None) -> None:
        """Record what the libp2p layer knows (connection state, dialable addresses)."""
        rec = self._peers.get(node_id)
        if rec is None:
            return
        self._peers[node_id] = replace(rec, connected=connected, addrs=rec.addrs if addrs is None else addrs)

    def expire(self) -> list[str]:
        """Drop peers silent for longer than `expiry_s`; return their node ids."""
        cutoff = self._mono() - self.expiry_s
        gone = [nid for nid, rec in self._peers.items() if rec.seen_mono < cutoff]
        for nid in gone:
            self._departed[nid] = replace(self._peers.pop(nid), connected=False)
            self._departed.move_to_end(nid)
        while len(self._departed) > self._remember:
            self._departed.popitem(last=False)
        return gone

    def get(self, node_id: str) -> PeerRecord | None:
        return self._peers.get(node_id)

    def peers(self) -> list[PeerRecord]:
        return sorted(self._peers.values(), key=lambda r: r.node_id)

    def node_ids(self) -> list[str]:
        return sorted(self._peers)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._peers
