"""A small, real in-memory NodeFacade over real engines, and servers to reach it.

`MemoryFacade` decodes submitted frames with the real wire codec, keeps requests in a
dict, publishes events to subscribers, and can finish a request the way the daemon
does: embed the outputs with the real MiniLM, cluster them by cosine distance within
the security frame, and project them to 2-D for the dashboard plot. The LLM is the
real `engine.LLMEngine` serving the tiny random Llama of `tests/tiny_models.py`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import torch
import trio
from nacl.signing import SigningKey

from engine.config import EngineConfig
from engine.embedding import EmbeddingEngine, Priority
from engine.llm_engine import LLMEngine
from engine.registry import DEFAULT_EMBEDDING, ModelRegistry
from node import wire
from node.api.app import create_app
from node.config import load_settings
from node.identity import Identity
from node.orchestrator.errors import RequestRejected
from tests.inprocess import InProcessServer

torch.set_num_threads(1)
ADMIN_TOKEN = "test-admin-token-0123456789"
TINY_MODEL = "tiny-llama"


@pytest.fixture
def anyio_backend() -> str:
    return "trio"  # the daemon's loop; proves the API has no asyncio-only code


# ---- engines (loaded once per session) -------------------------------------------------


@pytest.fixture(scope="session")
def embedding_engine() -> Iterator[EmbeddingEngine]:
    engine = EmbeddingEngine(device="cpu")
    trio.run(engine.scale_workers, DEFAULT_EMBEDDING, 1)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMEngine]:
    """The real LLMEngine with one worker of the tiny random Llama (small KV cache)."""
    from tests.tiny_models import make_tiny_llama_dir

    path = make_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"))
    llm = LLMEngine(
        ModelRegistry({TINY_MODEL: path}),
        device="cpu",
        num_threads=1,
        config=EngineConfig(kv_cache_bytes=8 * 1024 * 1024, max_batch_size=4),
    )
    trio.run(llm.scale_workers, TINY_MODEL, 1)
    yield llm
    llm.close()


# ---- the facade ------------------------------------------------------------------------


def sign_request(
    prompt: str = "What is the capital of France?",
    *,
    key: SigningKey | None = None,
    quorum: int = 3,
    models: list[str] | None = None,
    max_time_ms: int = 30_000,
    ts_ms: int | None = None,
) -> bytes:
    body = wire.InferenceRequest(
        prompt=prompt,
        accepted_models=models or [TINY_MODEL],
        temperature=0.0,
        max_tokens=16,
        security_frame=wire.SecurityFrame(
            quorum=quorum,
            max_time_ms=max_time_ms,
            sec_distance=0.35,
            sec_percentage=0.6,
            embedding_model=DEFAULT_EMBEDDING,
        ),
    )
    return wire.encode(body, key or SigningKey.generate(), ts_ms=ts_ms)


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """PCA to two dimensions (what the daemon shows on the dashboard)."""
    centered = vectors - vectors.mean(axis=0, keepdims=True)
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    out = centered @ vt[:2].T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out


class MemoryFacade:
    """Implements node.api.facade.NodeFacade in memory (see module docstring)."""

    def __init__(self, data_dir: Path, llm: LLMEngine | None, embeddings: EmbeddingEngine | None) -> None:
        self.settings = load_settings(data_dir, admin_token=ADMIN_TOKEN, llm_models={TINY_MODEL: 1})
        self.identity = Identity.generate()
        self.llm = llm
        self.embeddings = embeddings
        self.started_at = time.time()
        self.ready = True
        self.seen = wire.SeenCache()
        self.requests: dict[str, dict[str, Any]] = {}
        self.packets: deque[dict[str, Any]] = deque(maxlen=1000)
        self.log_records: list[dict[str, Any]] = []
        self.subscribers: list[tuple[str | None, anyio.abc.ObjectSendStream[dict[str, Any]]]] = []
        self.scaled: list[tuple[str, int]] = []
        self.reject_next: RequestRejected | None = None
        self.submitted_frames: list[bytes] = []  # what would have been gossiped
        self.peer_list: list[dict[str, Any]] = [
            {
                "peer_id": f"12D3KooWPeer{i}",
                "node_id": f"{i:02x}" * 32,
                "addrs": [f"/ip4/127.0.0.1/tcp/{4100 + i}"],
                "models": [TINY_MODEL],
                "workers": 1,
                "load": 0.1 * i,
                "queue_depth": i,
                "last_seen": time.time(),
                "reputation": 1.0 - 0.1 * i,
            }
            for i in range(1, 3)
        ]

    # -- requests --
    async def submit_request(self, frame: bytes) -> str:
        packet = self._check(frame)
        if packet.packet_id in self.requests:
            return packet.packet_id
        body = packet.body
        assert isinstance(body, wire.InferenceRequest)
        self.requests[packet.packet_id] = {
            "request_id": packet.packet_id,
            "state": "pending",
            "stage": "queued",
            "reason": None,
            "answer": None,
            "members": [],
            "commits": [],
            "reveals": [],
            "prompt": body.prompt,
            "accepted_models": list(body.accepted_models),
            "security_frame": body.security_frame.model_dump(),
            "created_at": packet.ts_ms / 1000,
            "ending_at": (packet.ts_ms + body.security_frame.max_time_ms) / 1000,
            "finished_at": None,
            "embedding_plot": [],
            "certificate": None,
        }
        self.submitted_frames.append(frame)
        self.packets.appendleft(
            {
                "ts": time.time(),
                "type": packet.type.value,
                "from": packet.sender_id,
                "packet_id": packet.packet_id,
                "size": len(frame),
                "verdict": "accepted",
            }
        )
        self.log_records.append(
            {"ts": time.time(), "event": "request_accepted", "request_id": packet.packet_id}
        )
        self.publish({"type": "request_accepted", "request_id": packet.packet_id})
        return packet.packet_id

    def _check(self, frame: bytes) -> wire.SignedPacket:
        packet = wire.decode(frame, limits=self.settings.wire, seen=None)
        if packet.type is not wire.PacketType.INFERENCE_REQUEST:
            raise RequestRejected("not_a_request", f"expected an inference_request, got {packet.type.value}")
        if packet.packet_id not in self.requests and self.seen.check_and_add(packet.packet_id, packet.ts_ms):
            raise wire.WireError(wire.WireReason.REPLAY, "already seen")
        if self.reject_next is not None:
            exc, self.reject_next = self.reject_next, None
            raise exc
        return packet

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        return self.requests.get(request_id)

    def list_requests(self, limit: int = 50) -> list[dict[str, Any]]:
        return sorted(self.requests.values(), key=lambda r: r["created_at"], reverse=True)[:limit]

    async def subscribe(self, request_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        tx, rx = anyio.create_memory_object_stream[dict[str, Any]](100)
        entry = (request_id, tx)
        self.subscribers.append(entry)
        try:
            async with rx:
                async for event in rx:
                    yield event
        finally:
            self.subscribers.remove(entry)

    def publish(self, event: dict[str, Any]) -> None:
        """Must run on the loop thread (InProcessServer.call does that for threaded tests)."""
        for rid, tx in list(self.subscribers):
            if rid is None or rid == event.get("request_id"):
                try:
                    tx.send_nowait(event)
                except anyio.WouldBlock:
                    pass

    def set_stage(self, request_id: str, stage: str) -> None:
        self.requests[request_id]["stage"] = stage
        self.publish({"type": "stage", "request_id": request_id, "stage": stage})

    async def finish(self, request_id: str, outputs: list[tuple[str, str]]) -> dict[str, Any]:
        """Commit, reveal and cluster `outputs` [(node_id, text)] as the daemon would."""
        req = self.requests[request_id]
        for node_id, _ in outputs:
            inference_id = hashlib.sha256(request_id.encode() + bytes.fromhex(node_id)).hexdigest()[:32]
            req["commits"].append({"node_id": node_id, "inference_id": inference_id})
            self.publish({"type": "commit", "request_id": request_id, "node_id": node_id})
        req["stage"] = "verifying"
        result = await self.embeddings.embed([t for _, t in outputs], priority=Priority.CONSENSUS)
        vecs = result.vectors
        dist = 1.0 - vecs @ vecs.T
        frame = req["security_frame"]
        clusters = [set(np.flatnonzero(dist[i] <= frame["sec_distance"])) for i in range(len(outputs))]
        best = max(clusters, key=len)
        needed = math.ceil(frame["sec_percentage"] * frame["quorum"])
        points = project_2d(vecs)
        plot, members = [], []
        for i in range(len(outputs)):
            commit = req["commits"][i]
            req["reveals"].append({**commit, "accepted": True, "reason": None})
            plot.append(
                {
                    **commit,
                    "x": float(points[i, 0]),
                    "y": float(points[i, 1]),
                    "in_cluster": i in best,
                }
            )
            if i in best:
                members.append(commit)
        ok = len(best) >= needed
        req.update(
            state="succeeded" if ok else "failed",
            stage="done",
            reason=None if ok else "no_cluster_of_needed_size",
            answer=outputs[min(best)][1] if ok else None,
            members=members if ok else [],
            finished_at=time.time(),
            embedding_plot=plot,
            certificate={"request_id": request_id, "members": members},
        )
        self.publish({"type": "request_finished", "request_id": request_id, "state": req["state"]})
        return req

    # -- node --
    def peers(self) -> list[dict[str, Any]]:
        return list(self.peer_list)

    def workers(self) -> list[dict[str, Any]]:
        out = [{"kind": "llm", **asdict(w)} for w in self.llm.worker_states()] if self.llm else []
        if self.embeddings:
            out += [{"kind": "embedding", **asdict(w)} for w in self.embeddings.worker_states()]
        return out

    async def scale_workers(self, model: str, n: int) -> None:
        if model != TINY_MODEL:
            raise ValueError(f"unknown model {model!r}; available: {TINY_MODEL}")
        self.scaled.append((model, n))

    def logs(self, last_n: int = 200, search: str | None = None) -> list[dict[str, Any]]:
        records = [r for r in self.log_records if not search or search.lower() in str(r).lower()]
        return records[-last_n:]

    def recent_packets(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.packets)[:limit]

    def is_ready(self) -> bool:
        return self.ready


@pytest.fixture
def facade(tmp_path: Path, tiny_llm: LLMEngine, embedding_engine: EmbeddingEngine) -> MemoryFacade:
    return MemoryFacade(tmp_path / "node", tiny_llm, embedding_engine)


@asynccontextmanager
async def asgi_client(facade: MemoryFacade, **app_kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """In-process client (no sockets). Streams are buffered: use LiveServer for SSE."""
    app = create_app(facade, **app_kwargs)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
        yield client


# ---- a real Hypercorn (trio worker) on 127.0.0.1 in a thread --------------------------

# The API app over the facade, served the way the daemon serves it (tests/inprocess.py).
LiveServer = InProcessServer


@pytest.fixture
def live_server(facade: MemoryFacade) -> Iterator[LiveServer]:
    server = InProcessServer.over_facade(facade).start(timeout=30)
    try:
        yield server
    finally:
        server.stop()
