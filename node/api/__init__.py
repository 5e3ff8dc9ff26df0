"""The node's HTTP API and dashboard, over the narrow ``NodeFacade`` seam.

- ``app``: ``create_app(facade)``: the FastAPI app (request submission and views, peers,
  workers, logs, packets, admin scaling, health, ``/metrics``, the dashboard);
  ``served_routes(app)``: every route it serves (the README's route table is checked
  against it).
- ``middleware``: the body-size limit (413 before reading) and HTTP metrics by route.
- ``schemas``: request/response models and what ``/openapi.json`` says that FastAPI
  cannot derive (the two body forms of ``POST /v1/requests``, event-stream events, the
  admin bearer scheme, errors always JSON). The document is a contract: schemathesis
  checks it against a live node.
- ``facade``: ``NodeFacade``, the only thing the API knows of a node (the daemon's is
  ``node.daemon.facade.DaemonFacade``; tests use an in-memory one).
- ``errors``: the one JSON error shape (``ErrorResponse``; ``error_responses(...)`` declares
  it per status), and the handlers that map every failure to it (a 405 lists every
  method of the path in ``Allow``).
- ``openai_routes``: OpenAI-compatible endpoints on the node's *local* engines (no
  consensus): ``/v1/chat/completions``, ``/v1/embeddings``, ``/v1/models``.
- ``verified_routes``: ``/verified/v1``, the OpenAI API answered by network consensus
  (chat completions, streaming with progress comments; network models; embeddings not
  offered), and ``GET /v1/requests/{id}/certificate``.
- ``verified_calls``: an OpenAI chat body as a signed ``inference_request`` (the ``rakis``
  overrides, multi-turn messages, stop), and a final request view as a ``chat.completion``
  or the OpenAI error its failure maps to.
- ``access``: who may spend the network's compute: API keys (401) and per-caller rate
  and concurrency limits (429).
- ``sse``: server-sent event streams of facade events, with keep-alives.
- ``static/``: the dashboard (plain HTML, CSS and JavaScript; ``ask.js`` is the "ask the
  network" box over ``/verified/v1``).
"""
