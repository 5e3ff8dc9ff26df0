"""Settings of the gossip layer, and the one function that builds them from the node's config.

The daemon builds its ``GossipConfig`` only through :func:`config_from_settings`, so a
setting in ``config.toml`` (``seen_cache_entries``, ``rate_limit_per_peer``, ...) always
reaches the running gossip node; tests and the local testnet use :func:`local_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node import wire
from node.p2p.libp2p_compat import parse_listen_addr, parse_peer_addr

__all__ = ["DEFAULT_TOPIC", "GossipConfig", "config_from_settings", "local_config"]

DEFAULT_TOPIC = "rakis/1"


@dataclass(frozen=True)
class GossipConfig:
    """Settings of the gossip layer; the daemon builds this from its config file."""

    listen_addrs: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/4001",)
    announce_addrs: tuple[str, ...] = ()  # what peers should dial; default: expanded listen addrs
    bootstrap: tuple[str, ...] = ()  # /ip4/../tcp/../p2p/<peer id>; redialed when lost
    # Circuit relay v2 (node/p2p/relay.py). relay_service: serve as a relay (hop) for
    # nodes that cannot be dialed. relays: relay nodes (/ip4/../tcp/../p2p/<relay id>)
    # this node keeps a reservation on; it then announces its /p2p-circuit addresses
    # through them instead of its own (undialable) listen addresses.
    relay_service: bool = False
    relays: tuple[str, ...] = ()
    relay_refresh_s: float = 300.0  # renew reservations this often (relay TTL: 3600 s)
    mdns: bool = True  # LAN discovery; tests turn it off
    dht: bool = True  # Kademlia DHT discovery, seeded by the bootstrap peers
    dht_interval_s: float = 10.0  # one lookup + provide + find_providers round this often
    dht_max_peers: int = 32  # discovery dials no more once this many connections are open
    topic: str = DEFAULT_TOPIC
    limits: wire.WireLimits = wire.DEFAULT_LIMITS
    heartbeat_s: float = 1.0  # GossipSub mesh maintenance (libp2p default: 120 s)
    status_interval_s: float = 2.0  # our peer_status heartbeat
    info_interval_s: float = 15.0  # our peer_info (also sent when a new peer appears)
    peer_expiry_s: float = 30.0  # forget peers silent for this long
    reconnect_interval_s: float = 5.0  # redial lost bootstrap peers this often
    dial_timeout_s: float = 5.0
    queue_size: int = 4096  # verified packets waiting for the daemon; overflow is counted
    outbound_queue_size: int = 4096  # RPCs queued per peer (libp2p default 32 drops bursts)
    deliver_own: bool = False  # also put our own published packets on packets()
    # py-libp2p drops everything a forwarder relays above this many messages/s on a topic
    # (its default of 10/s loses legitimate traffic); our own limits below are finer.
    libp2p_topic_rate: float = 2000.0
    sender_rate: float = 100.0  # frames/s per origin key (sustained)
    sender_burst: float = 400.0
    peer_rate: float = 1000.0  # frames/s per forwarding peer (all origins together)
    peer_burst: float = 4000.0
    ban_threshold: float = 50.0  # penalty points (see PENALTY_POINTS) that get a peer banned
    penalty_half_life_s: float = 60.0
    ban_s: float = 600.0
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    prune_back_off_s: int = 10
    seen_ttl_s: int = 120  # libp2p message-id dedup window
    seen_max_entries: int = 100_000  # wire replay cache
    shutdown_timeout_s: float = 5.0  # orderly close; then cancelled hard
    disconnect_hold_s: float = 30.0  # after disconnect(): keep the peer off pubsub this long

    def __post_init__(self) -> None:
        for name in ("listen_addrs", "bootstrap", "announce_addrs", "relays"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of multiaddrs, not one string")
            object.__setattr__(self, name, tuple(value))
        if not self.listen_addrs:
            raise ValueError("listen_addrs must name at least one multiaddr")
        for addr in self.listen_addrs:
            parse_listen_addr(addr)
        for addr in self.bootstrap:
            parse_peer_addr(addr)
        for addr in self.announce_addrs:
            parse_listen_addr(addr)
        for addr in self.relays:
            parse_peer_addr(addr)
            if "/p2p-circuit" in addr:
                raise ValueError(f"a relay must be dialed directly, not through another relay: {addr}")
        positive = (
            "heartbeat_s",
            "status_interval_s",
            "info_interval_s",
            "peer_expiry_s",
            "reconnect_interval_s",
            "dial_timeout_s",
            "libp2p_topic_rate",
            "sender_rate",
            "sender_burst",
            "peer_rate",
            "peer_burst",
            "ban_threshold",
            "penalty_half_life_s",
            "ban_s",
            "shutdown_timeout_s",
            "dht_interval_s",
            "relay_refresh_s",
        )
        if self.disconnect_hold_s < 0:
            raise ValueError(f"disconnect_hold_s must not be negative, got {self.disconnect_hold_s}")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.dht_max_peers < 1:
            raise ValueError(f"dht_max_peers must be at least 1, got {self.dht_max_peers}")
        if self.queue_size < 1 or self.outbound_queue_size < 1:
            raise ValueError("queue_size and outbound_queue_size must be at least 1")
        if not 1 <= self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("need 1 <= degree_low <= degree <= degree_high")
        if not self.topic:
            raise ValueError("topic must not be empty")


def config_from_settings(settings: Any, **overrides: Any) -> GossipConfig:
    """GossipConfig from the daemon's `node.config` settings object (duck-typed).

    `rate_limit_per_peer` / `rate_limit_burst` there mean frames per *node* (origin key):
    they become `sender_rate` / `sender_burst`. A forwarding connection carries many
    nodes' traffic, so its own limit is set 20 times higher (at least 1000/s).
    """
    values: dict[str, Any] = {}
    for ours, theirs in (
        ("listen_addrs", "listen_addrs"),
        ("bootstrap", "bootstrap"),
        ("announce_addrs", "announce_addrs"),
        ("mdns", "mdns"),
        ("dht", "dht"),
        ("dht_interval_s", "dht_interval_s"),
        ("relay_service", "relay_service"),
        ("relays", "relays"),
        ("limits", "wire"),
        ("seen_max_entries", "seen_cache_entries"),
        ("sender_rate", "rate_limit_per_peer"),
        ("sender_burst", "rate_limit_burst"),
    ):
        if hasattr(settings, theirs):
            values[ours] = getattr(settings, theirs)
    if "sender_rate" in values:
        values["peer_rate"] = max(1000.0, 20.0 * float(values["sender_rate"]))
        values["peer_burst"] = max(4000.0, 20.0 * float(values.get("sender_burst", 0)))
    values.update(overrides)
    return GossipConfig(**values)


def local_config(**overrides: Any) -> GossipConfig:
    """Settings for nodes on 127.0.0.1 (tests, local testnet): ephemeral port, no mDNS,
    short intervals."""
    base: dict[str, Any] = {
        "listen_addrs": ("/ip4/127.0.0.1/tcp/0",),
        "mdns": False,
        "dht": False,
        "reconnect_interval_s": 0.5,
    }
    base.update(overrides)
    return GossipConfig(**base)
