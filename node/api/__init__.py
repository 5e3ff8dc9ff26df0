"""The node's HTTP API and dashboard, over the narrow ``NodeFacade`` seam.

- ``app``: ``create_app(facade)``: the FastAPI app (request submission and views, peers,
  workers, logs, packets, admin scaling, health, ``/metrics``, the dashboard), with the
  body-size limit and metrics middleware.
- ``facade``: ``NodeFacade``, the only thing the API knows of a node (the daemon's is
  ``node.daemon.facade.DaemonFacade``; tests use an in-memory one).
- ``errors``: the one JSON error shape, and the handlers that map every failure to it.
- ``openai_routes``: OpenAI-compatible endpoints on the node's *local* engines (no
  consensus): ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``.
- ``sse``: server-sent event streams of facade events, with keep-alives.
- ``static/``: the dashboard (plain HTML, CSS and JavaScript).
"""
