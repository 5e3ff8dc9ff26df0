"""Finding rakis peers beyond the bootstrap list, through py-libp2p's Kademlia DHT.

Bootstrap peers seed the DHT: once a node is connected to any one of them, a lookup of
its own key walks the network and dials the peers closest to it (that is what fills a
Kademlia routing table), and every node *provides* the key of the rakis topic, so
``find_providers(topic key)`` names the nodes that gossip on our topic among whatever
else shares the DHT. Found peers are dialed; their connections then carry GossipSub
like any other, so a node that knows one bootstrap peer ends up meshed with the rest.

Whom to dial is still decided here, not by libp2p's auto-connector (see
``libp2p_compat._disarm_auto_connector``): banned peers are skipped, and at most
``max_peers`` connections are opened by discovery.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service

from node.logs import get_logger

log = get_logger(__name__)
# py-libp2p's DHT logs every unreachable peer and failed provider push at warning level:
# in a network where nodes come and go that is noise, not news.
logging.getLogger("libp2p.kad_dht").setLevel(logging.ERROR)

__all__ = ["DhtDiscovery", "topic_key"]

UNDIALABLE_HOSTS = ("0.0.0.0", "::")


def topic_key(topic: str) -> str:
    """The DHT key rakis nodes provide: a sha2-256 multihash (hex) of the topic name."""
    return "1220" + hashlib.sha256(f"rakis-topic:{topic}".encode()).hexdigest()


def dialable(info: PeerInfo) -> PeerInfo | None:
    """Drop wildcard addresses (a peer listening on 0.0.0.0 may report it); None if none left."""
    keep: list[multiaddr.Multiaddr] = []
    for addr in info.addrs:
        text = str(addr)
        if any(f"/{h}/" in text for h in ("ip4/0.0.0.0", "ip6/::")):
            continue
        keep.append(addr)
    return PeerInfo(info.peer_id, keep) if keep else None


class DhtDiscovery:
    """Runs a KadDHT server on ``host`` and dials the rakis peers it finds.

    ``should_dial(peer_id)`` lets the gossip layer veto a peer (banned, held after a
    disconnect, already being dialed); ``dial(info)`` starts a dial the gossip layer's
    way (in its nursery, with its timeout and counters) and returns at once.
    """

    def __init__(
        self,
        host: IHost,
        topic: str,
        *,
        interval_s: float,
        max_peers: int,
        should_dial: Callable[[ID], bool],
        dial: Callable[[PeerInfo], None],
    ) -> None:
        self.host = host
        self.key = topic_key(topic)
        self.interval_s = interval_s
        self.max_peers = max_peers
        self._should_dial = should_dial
        self._dial = dial
        self.dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False)
        self.lookups = 0
        self.found = 0  # peers dialed because the DHT named them
        self.errors = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.dht):
            task_status.started()
            await trio.sleep(min(0.5, self.interval_s))
            while True:
                await self.round()
                await trio.sleep(self.interval_s)

    async def round(self) -> None:
        """One discovery round: seed the routing table from our connections, look
        ourselves up, (re)provide the topic key, and dial the topic's providers."""
        self.lookups += 1
        own = self.host.get_id()
        connected = set(self.host.get_connected_peers())
        for peer in connected:
            try:
                await self.dht.add_peer(peer, skip_server_mode_check=True)
            except Exception:  # noqa: BLE001 - a peer gone meanwhile
                pass
        if not connected:
            return  # nobody to ask yet: bootstrap dialing comes first
        candidates: dict[ID, PeerInfo] = {}
        try:
            with trio.move_on_after(self.interval_s * 2):
                for peer in await self.dht.peer_routing.find_closest_peers_network(own.to_bytes()):
                    addrs = self.host.get_peerstore().addrs(peer)
                    candidates[peer] = PeerInfo(peer, list(addrs))
        except Exception as exc:  # noqa: BLE001 - a lookup failing is retried next round
            self.errors += 1
            log.debug("dht_lookup_failed", error=str(exc))
        try:
            with trio.move_on_after(self.interval_s * 2):
                await self.dht.provide(self.key)
                for info in await self.dht.find_providers(self.key, count=self.max_peers):
                    candidates[info.peer_id] = info
        except Exception as exc:  # noqa: BLE001
            self.errors += 1
            log.debug("dht_providers_failed", error=str(exc))
        connected = set(self.host.get_connected_peers())
        room = self.max_peers - len(connected)
        for peer, info in candidates.items():
            if room <= 0:
                break
            if peer == own or peer in connected or not self._should_dial(peer):
                continue
            target = dialable(info)
            if target is None:
                continue
            room -= 1
            self.found += 1
            log.info("dht_peer_found", peer=str(peer))
            self._dial(target)
