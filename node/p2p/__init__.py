"""Peer-to-peer layer: signed rakis packets over libp2p GossipSub.

- ``gossip``: ``GossipNode``, a node's presence on the network: one libp2p host keyed by
  the node's ed25519 key, one topic; every frame passes ``wire.decode`` in the topic
  validator before it is relayed; verified packets go to one bounded queue
  (``packets()``) that the orchestrator consumes; heartbeats publish ``peer_info`` and
  ``peer_status`` from the daemon's providers.
- ``config``: ``GossipConfig`` and ``config_from_settings``, the one way the daemon
  turns ``Settings`` into gossip settings (``local_config`` for tests and testnets).
- ``peers``: the table of known rakis peers, fed by their signed heartbeats.
- ``addresses``: the addresses peers should dial (wildcards expanded into interface
  addresses; ``announce_addrs`` for public or NAT-mapped ones).
- ``bans``: bans that survive a restart (kept in the store), and ``SenderPolicy``: keys
  whose outputs fail re-checks are throttled, then banned.
- ``ratelimit``: per-sender and per-forwarder token buckets and the penalty box that
  turns invalid frames into bans.
- ``relay``: circuit relay v2: a node serves as a relay (``relay_service``); a node
  nobody can dial reserves on ``relays`` and announces its ``/p2p-circuit`` addresses;
  circuit addresses are dialed through the relay (the swarm skips them).
- ``discovery``: Kademlia DHT discovery: nodes beyond the bootstrap list are found by
  providing and looking up the topic's key, then dialled.
- ``sync``: ``/rakis/sync/1``, history sync: a node that (re)joins asks peers for the
  requests and signed packets of the last ``sync_window_s``; bounded, rate-limited, every
  frame re-verified like gossip.
- ``sync_adopt``: finished requests learned by sync are adopted only from a certificate
  re-checked end to end on this node.
- ``libp2p_compat``: every reach into py-libp2p 0.8.1 beyond its documented API (host,
  pubsub, router, blacklist, seen-cache thread), so an upgrade has one file to re-check.

Flow of one incoming frame: libp2p -> ``GossipNode._validate`` (rate limits, wire decode,
replay cache; penalties on failure) -> relay + ``packets()`` -> orchestrator.
"""
