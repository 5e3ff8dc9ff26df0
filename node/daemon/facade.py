"""``node.api.facade.NodeFacade`` for the real daemon: the API's one view of the node."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from node import identity as identity_mod
from node.config import Settings
from node.daemon.advert import NodeAdvert
from node.daemon.compute import model_identities
from node.logs import search_entries
from node.orchestrator.errors import RequestRejected
from node.orchestrator.orchestrator import Orchestrator

__all__ = ["DaemonFacade"]


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


class DaemonFacade:
    """``node.facade.NodeFacade`` for the real daemon (used by ``node.api.create_app``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        identity: identity_mod.Identity,
        orchestrator: Orchestrator,
        gossip: Any,
        advert: NodeAdvert,
        llm: Any,
        embeddings: Any,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.orchestrator = orchestrator
        self.gossip = gossip
        self.advert = advert
        self.llm = llm
        self.embeddings = embeddings
        self.ready = False

    @property
    def started_at(self) -> float:
        return self.advert.started_at

    @property
    def api_url(self) -> str | None:
        return self.advert.api_url

    def model_hashes(self) -> dict[str, str]:
        """{LLM: the identity this node commits under} (``GET /v1/models``)."""
        return model_identities(self.llm)

    async def submit_request(self, frame: bytes) -> str:
        if not self.ready:
            raise RequestRejected("not_ready", "the node is still loading its models")
        return await self.orchestrator.submit_request(frame)

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        return self.orchestrator.get_request(request_id)

    def list_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return self.orchestrator.list_requests(limit)

    def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        return self.orchestrator.subscribe(request_id)

    def peers(self) -> list[dict[str, Any]]:
        rep = self.orchestrator.reputation()
        out = []
        for p in self.gossip.peers():
            d = p.as_dict() if hasattr(p, "as_dict") else _jsonable(p)
            d.setdefault("last_seen", d.get("last_seen_ms"))
            d["reputation"] = rep.get(d.get("node_id", ""), {})
            out.append(_jsonable(d))
        return out

    def workers(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.llm is not None:
            out += [{"kind": "llm", **_jsonable(w)} for w in self.llm.worker_states()]
        if self.embeddings is not None:
            out += [{"kind": "embedding", **_jsonable(w)} for w in self.embeddings.worker_states()]
        return out

    async def scale_workers(self, model: str, n: int) -> None:
        from engine import ModelKind, UnknownModelError

        if not isinstance(n, int) or n < 0 or n > 64:
            raise ValueError(f"worker count must be an integer in 0..64, got {n!r}")
        try:
            if self.embeddings is not None and model in self.embeddings.registry.names(ModelKind.EMBEDDING):
                if n < 1:
                    raise ValueError("a node needs at least one embedding worker to verify reveals")
                await self.embeddings.scale_workers(model, n)
            elif self.llm is not None:
                await self.llm.scale_workers(model, n)
            else:
                raise ValueError("this node has no LLM engine")
        except UnknownModelError as e:
            raise ValueError(str(e)) from None

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        items = list(self.orchestrator.logs(last_n=last_n))
        for eng, source in ((self.llm, "llm"), (self.embeddings, "embedding")):
            if eng is None:
                continue
            for e in eng.logs(last_n):
                d = e.to_dict()
                d["ts"] = int(d["ts"] * 1000)
                d["source"] = source
                d["event"] = d.pop("type", None)
                items.append(_jsonable(d))
        items.sort(key=lambda e: e.get("ts") or 0)
        return search_entries(items, search)[-last_n:]

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.orchestrator.recent_packets(limit)

    def is_ready(self) -> bool:
        return self.ready and self.gossip.is_running and self.orchestrator.accepting

    def committee_stats(self) -> dict[str, Any] | None:
        """This node's share of the work under committee sortition (for ``/v1/node`` and
        the dashboard): ``ran``, ``not_selected``, ``widened``, ``share``, ``ignored_commits``."""
        return self.orchestrator.committee_stats()
