"""The node's core: every request's life cycle, from packet to certificate.

How a packet flows (one way: wire -> orchestrator -> quorum machine -> store and outbox)::

    gossip / API ──► Orchestrator.handle_packet / submit_request      (orchestrator.py)
                        │  unknown request id ──► OrphanPackets.keep   (orphans.py)
                        ▼
                     QuorumMachine (consensus.quorum: pure, no clock, no I/O)
                        │  returns Actions
                        ▼
                     Orchestrator._apply: per action, store side effects, then
                        ├─ Outbox.stage   (sign, store as unsent)      (outbox.py)
                        ├─ store the machine's snapshot
                        ├─ Outbox.flush   (publish, mark sent)
                        ├─ RequestEmbedding ──► verification task (Compute.embed)    (checks.py)
                        ├─ RequestRecheck ──► re-check task (Compute.recheck)       (checks.py)
                        └─ Finished ──► ResultRecorder.finish          (results.py)

Our own inference runs beside it (``OwnInference``, through ``Compute``) and its
output goes back into the machine; timers (``Orchestrator._ticker``) tick machines,
prune orphans and repeat lost reveal requests (``RevealResender``).

Modules, each with one job; none imports ``orchestrator.py`` back (it builds them
and hands each what it needs):

- ``orchestrator``: the request life cycle: inputs, feeding the quorum machine,
  starting inference and verification, applying actions, resume after a restart.
- ``config``: ``OrchestratorConfig``, validated when built, ``from_settings``.
- ``compute``: the ``Compute`` seam to the engines, and ``FaultyCompute``, fault
  injection (garbage / off-topic outputs) as a wrapper around it.
- ``inference``: ``OwnInference``: generate, embed, and keep our inference in the store.
- ``checks``: ``RevealChecks``: each revealed output's embedding (clustering) and its
  proof-of-inference re-check, run as tasks; a failed re-check charges the revealer.
- ``committee``: ``Committees``, committee sortition per request (consensus.sortition):
  whether this node runs it, in which round, and which peers' commits count.
- ``outbox``: persist, then publish: stage, flush, re-send unsent frames on resume.
- ``reveals``: rate-limited repeats of reveal requests and reveals (lost packets).
- ``orphans``: packets for requests not seen yet: kept under a cap and a TTL.
- ``results``: finishing a request: members, certificate, reputation, embedding plot.
- ``views``: the request views the API serves, and a request's stage.
- ``events``: event subscriptions (SSE), the node's event log, recent packets.
- ``live``: ``LiveRequest``, the in-memory companion of a pending request's machine.
- ``stages``: ``STAGES``, the stage names (no imports, so the CLI can read them).
- ``admission``: what an API submission must pass before it is persisted or gossiped.
- ``errors``: ``RequestRejected``, ``InferenceFailed`` (the API maps them to statuses).

This package docstring is the map only: import from the modules.
"""
