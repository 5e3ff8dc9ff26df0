"""rakis node: the daemon that takes part in the network's consensus, and its clients.

Subpackages, by architecture (each ``__init__`` is the map of its own modules):

- ``orchestrator/``: the request life cycle (request -> inference -> commit -> reveal ->
  verification -> result) around the pure ``consensus.quorum`` machine.
- ``p2p/``: signed packets over libp2p GossipSub, the peer table, rate limits and bans,
  and the one place that handles py-libp2p's sharp edges.
- ``daemon/``: ``rakis node start``: the one composition root that wires store, engines,
  gossip, orchestrator and HTTP API, in start-up and shutdown order.
- ``api/``: the HTTP API and dashboard over the narrow ``NodeFacade`` seam.
- ``cli/``: the ``rakis`` command line, one module per command group.

Modules shared by all of them:

- ``wire``: the signed packet format (msgpack + ed25519), schemas, limits, replay cache.
- ``store``: SQLite persistence of everything the node promised (WAL, migrations, outbox).
- ``identity``: the node's ed25519 key file.
- ``config``: validated ``Settings`` (defaults < config.toml < ``RAKIS_*`` < overrides).
- ``logs``: structlog set-up and the one log search.
- ``metrics``: the Prometheus registry every package increments.
- ``clock``: wall-clock milliseconds, the one time unit of packets and views.
- ``version``: the installed package version.
- ``client``: the signing client (the user's key, signed requests, an HTTP client).
- ``certificates``: reading a certificate and checking it offline (``rakis verify``).
- ``testnet``: a local testnet of N daemons in their own data directories.
- ``netns``: network namespaces on a bridge, so a testnet's nodes are separate hosts.

Data flows one way: gossip or the API hands a verified packet to the orchestrator,
which feeds the quorum machine and carries out its actions through the store (first)
and gossip (second).
"""
