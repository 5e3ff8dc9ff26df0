"""``rakis node start``: the daemon's one composition root.

- ``run``: ``serve`` builds and wires everything in start-up order (data-dir lock and
  store, engines, gossip, orchestrator, HTTP API), reports readiness, and shuts down in
  reverse order; ``run_daemon`` is the blocking entry point with signal handling.
- ``compute``: ``EngineCompute``, the orchestrator's ``Compute`` over the engines: the one
  place where a wire request becomes an engine call.
- ``facade``: ``DaemonFacade``, the real ``node.api.facade.NodeFacade`` the HTTP API uses.
- ``advert``: ``NodeAdvert``, what the node tells peers about itself (``peer_info``,
  ``peer_status``), built from the engines so gossip can be wired without late binding.
- ``datadir``: the exclusive data-dir lock and ``node.json`` (where a running node listens).
- ``startup_errors``: every start-up failure as one line with its fix; ``preflight``
  checks models, addresses and ports before anything slow starts.

Nothing else in node/ builds engines, gossip or the orchestrator for a real node.
"""
