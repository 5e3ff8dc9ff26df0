"""What this node tells its peers about itself: ``peer_info`` and ``peer_status``.

The gossip layer calls these providers on its own timers. They read the engines and the
orchestrator's queue, so they exist before the gossip node is built and need nothing
from it: the daemon wires gossip once, with no late binding.
"""

from __future__ import annotations

import time
from typing import Any

from node import wire
from node.daemon.compute import model_identities
from node.version import package_version

__all__ = ["NodeAdvert"]


class NodeAdvert:
    """Builds this node's ``peer_info`` / ``peer_status`` bodies from its engines."""

    def __init__(self, *, llm: Any, embeddings: Any) -> None:
        self.llm = llm
        self.embeddings = embeddings
        self.started_at = time.time()
        self.api_url: str | None = None  # set once the HTTP server is listening

    def ready_workers(self) -> dict[str, int]:
        """Ready LLM workers per model: the capacity peer_info advertises (and the
        committee sortition weighs)."""
        workers: dict[str, int] = {}
        if self.llm is not None:
            for w in self.llm.worker_states():
                if w.state == "ready":
                    workers[w.model] = workers.get(w.model, 0) + 1
        return workers

    def peer_info(self) -> wire.PeerInfo | None:
        workers = self.ready_workers()
        return wire.PeerInfo(
            models=self.llm.available_models() if self.llm is not None else [],
            embedding_models=self.embeddings.available_models() if self.embeddings is not None else [],
            workers=workers,
            model_hashes=model_identities(self.llm),
            device=getattr(self.llm, "device", "cpu") if self.llm is not None else "cpu",
            version=package_version(),
            api_url=self.api_url,
        )

    def peer_status(self) -> wire.PeerStatus | None:
        total = busy = 0
        tps = 0.0
        if self.llm is not None:
            for w in self.llm.worker_states():
                if w.state == "ready":
                    total += 1
                    busy += int(w.active_requests > 0)
                    tps += w.tokens_per_s or 0.0
        # Requests waiting for a worker; running ones show in busy_workers / load.
        queue = self.llm.queue_depth() if self.llm is not None else 0
        return wire.PeerStatus(
            load=float(busy / total) if total else 0.0,
            queue_depth=int(queue),
            tokens_per_s=float(tps),
            busy_workers=busy,
            total_workers=total,
            uptime_s=float(time.time() - self.started_at),
        )
