"""The narrow interface between the daemon core and the HTTP API.

`node.api.app` talks to the daemon only through `NodeFacade`, so the API can be tested
over a small in-memory facade and the daemon core (`node.orchestrator`, `node.daemon`)
can change its internals without touching the HTTP layer.
Refusals are `node.orchestrator.errors.RequestRejected`: they belong to the core.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

__all__ = ["NodeFacade"]

if TYPE_CHECKING:  # imported only for annotations: keeps node.api.facade import-light
    from engine import EmbeddingEngine, LLMEngine
    from node.config import Settings
    from node.identity import Identity


@runtime_checkable
class NodeFacade(Protocol):
    """What the HTTP API needs from a running node.

    Request dicts returned by `get_request`/`list_requests` carry: request_id, state
    ("pending"|"succeeded"|"failed"|"expired"), stage ("queued"|"inferring"|"committed"|
    "revealing"|"verifying"|"done"), reason, answer, members [{inference_id, node_id}],
    commits [{node_id, inference_id}], reveals [{node_id, inference_id, accepted, reason}],
    prompt, accepted_models, security_frame, created_at, ending_at, finished_at,
    embedding_plot [{inference_id, node_id, x, y, in_cluster}] (when finished),
    certificate (dict, when finished). All values must be JSON-serialisable.
    """

    settings: Settings
    identity: Identity
    llm: LLMEngine | None
    embeddings: EmbeddingEngine | None
    started_at: float

    async def submit_request(self, frame: bytes) -> str:
        """Decode (signature, schema, limits, replay), persist, gossip; return request_id.

        Raises `node.wire.WireError` for bad frames or `RequestRejected` for frames this
        node refuses. A duplicate of an already accepted request returns its id.
        """
        ...

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        """The request's current view (see class docstring), or None if unknown."""
        ...

    def list_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        """Most recent requests first."""
        ...

    def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Live events `{"type": ..., "request_id": ..., ...}`; None = every event."""
        ...

    def peers(self) -> list[dict[str, Any]]:
        """{peer_id, node_id, addrs, models, workers, load, queue_depth, last_seen, reputation}."""
        ...

    def workers(self) -> list[dict[str, Any]]:
        """Local engine workers (LLM and embedding) and their states."""
        ...

    async def scale_workers(self, model: str, n: int) -> None:
        """Set the number of local workers for `model`; ValueError for unknown models/bad n."""
        ...

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        """Recent engine/node log records, newest last."""
        ...

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        """{ts, type, from, packet_id, size, verdict}, newest first."""
        ...

    def is_ready(self) -> bool:
        """True once the host is listening and the engines are loaded."""
        ...
