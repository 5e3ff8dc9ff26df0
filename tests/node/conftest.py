"""Fixtures for orchestrator tests: real engines (tiny random Llama, real MiniLM) and
an in-process packet bus that runs every frame through the real wire decoder.

The bus stands in for gossip only (gossip has its own tests and the e2e suite runs
real libp2p hosts): each node decodes with its own replay cache, as the gossip
validator does, and receives frames on its own task so handlers never nest.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import trio
from nacl.signing import SigningKey

from node import wire
from tests.node.builders import sample_bodies

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from tests.tiny_models import make_tiny_llama_dir

    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny-llama"), seed=3)


class CoreCompute:
    """`node.orchestrator.compute.Compute` over one `EngineCore` worker and a real `EmbeddingEngine`."""

    def __init__(self, core, embeddings, model_name: str, gate: trio.Event | None = None) -> None:
        self.gate = gate  # when given, generation waits for it (to hold a node back)
        self.core = core
        self.embeddings = embeddings
        self.model_name = model_name

    def llm_models(self) -> list[str]:
        return [self.model_name]

    def embedding_models(self) -> list[str]:
        return self.embeddings.available_models()

    def model_hash(self, model: str) -> str | None:
        from engine.model_files import weights_hash

        return weights_hash(self.core.model_dir) if model == self.model_name else None

    async def generate(self, request_id, body, models, deadline_s):
        from engine.types import GenerationRequest
        from node.daemon.compute import engine_input
        from node.orchestrator.errors import InferenceFailed

        messages, sampling = engine_input(request_id, body)
        req = GenerationRequest(
            request_id=f"{request_id}-{id(self)}",
            messages=messages,
            sampling=sampling,
            deadline=deadline_s,
        )
        if self.gate is not None:
            await self.gate.wait()
        stream = self.core.submit(req)
        res = await trio.to_thread.run_sync(stream.result)
        if res.finish_reason not in ("stop", "length"):
            raise InferenceFailed(res.finish_reason)
        from node.orchestrator.compute import Generated

        return Generated(self.model_name, res.text, tuple(res.token_ids))

    async def recheck(self, jobs, *, deadline_s):
        """The daemon's re-check (same engine inputs, same verdict mapping) on this core."""
        from consensus.recheck import RecheckVerdict
        from engine.types import RecheckRequest
        from node.daemon.compute import engine_input, verdict_from_result

        out = []
        for job in jobs:
            if self.model_hash(job.model) != job.model_hash:
                out.append(RecheckVerdict.unavailable("not held"))
                continue
            messages, sampling = engine_input(job.request_id, job.body)
            req = RecheckRequest(
                request_id=f"recheck-{job.request_id[:16]}-{id(job)}",
                sampling=sampling,
                messages=messages,
                output_text=job.output,
                output_token_ids=None if job.output_tokens is None else list(job.output_tokens),
                deadline=deadline_s,
            )
            (res,) = await trio.to_thread.run_sync(self.core.recheck, [req])
            out.append(verdict_from_result(res))
        return out

    async def embed(self, texts, *, model, consensus, deadline_s):
        from engine.embedding import Priority

        res = await self.embeddings.embed(
            texts,
            model=model,
            priority=Priority.CONSENSUS if consensus else Priority.NORMAL,
            deadline=deadline_s,
        )
        return np.asarray(res.vectors)


@pytest.fixture(scope="module")
def engines(tiny_llama_dir):
    """One tiny-Llama worker and one MiniLM worker shared by the module's nodes."""
    import torch

    from engine.core import EngineCore
    from engine.embedding import EmbeddingEngine

    torch.set_num_threads(1)
    core = EngineCore(tiny_llama_dir, kv_cache_bytes=16 * 1024 * 1024, name="tiny-llama")
    core.start()
    emb = EmbeddingEngine()
    trio.run(emb.scale_workers, "all-minilm-l6-v2", 1)
    yield core, emb
    core.stop()
    emb.close()


class Bus:
    """Delivers every published frame to every other attached node, decoded afresh."""

    def __init__(self) -> None:
        self.nodes: dict[str, trio.MemorySendChannel] = {}
        self.sent: list[bytes] = []
        self.down: set[str] = set()  # node ids whose publish fails (gossip down)
        # (receiver node id, packet) -> True to lose the packet on its way to that node
        self.lose = lambda node_id, pkt: False

    def attach(self, node_id: str):
        """Returns (publish, packets) for the node with this id."""
        from node import wire

        send, recv = trio.open_memory_channel(10_000)
        self.nodes[node_id] = send
        seen = wire.SeenCache()

        async def packets():
            async for frame in recv:
                try:
                    pkt = wire.decode(frame, seen=seen)
                except wire.WireError:
                    continue
                if not self.lose(node_id, pkt):
                    yield pkt

        async def publish(frame: bytes) -> None:
            if node_id in self.down:
                raise RuntimeError("gossip is down")
            self.sent.append(frame)
            for other, ch in list(self.nodes.items()):
                if other != node_id:
                    ch.send_nowait(frame)

        return publish, packets()

    def detach(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)


# --- wire, identity, config, logs and CLI tests -------------------------------------

@pytest.fixture(scope="session")
def key() -> SigningKey:
    return SigningKey(b"\x11" * 32)


@pytest.fixture(scope="session")
def other_key() -> SigningKey:
    return SigningKey(b"\x22" * 32)


@pytest.fixture
def request_body() -> wire.InferenceRequest:
    body = sample_bodies()[0]
    assert isinstance(body, wire.InferenceRequest)
    return body


@pytest.fixture(autouse=True)
def restore_logging():
    """CLI and logging tests install a root handler; take it off again afterwards."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "rakis"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
