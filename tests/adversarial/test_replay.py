"""Replay of a valid request frame minutes later, from another peer: processed once.

The gossip replay cache (`SeenCache`) only covers a frame while its timestamp is inside
the clock-skew window, and it is empty after a restart; beyond that the orchestrator
and its SQLite store must recognise the request id. The node here is the daemon's
stack without HTTP: a real libp2p `GossipNode`, the `Orchestrator`, a `Store` on disk
and real engines (tiny random Llama, MiniLM), wired as `node.daemon.run.serve` wires them.
The node accepts frames up to 10 minutes old (`max_clock_skew_ms`). The request was
signed 20 s before it first arrives, inside its 30 s commit window (commits are
time-boxed from the signing time, protocol 2), and is replayed after that window closed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from node import wire
from node.clock import now_ms
from node.identity import Identity
from node.orchestrator.config import OrchestratorConfig
from node.orchestrator.orchestrator import Orchestrator
from node.store import Store
from tests.node.conftest import CoreCompute
from tests.node.p2p.conftest import Net, new_node, run_trio, wait_until

from .conftest import TINY_MODEL, request_body

pytestmark = pytest.mark.timeout(180)

WINDOW = wire.WireLimits(max_clock_skew_ms=600_000)
AGE_MS = 20_000  # the frame was signed 20 s before it first arrives


@pytest.fixture(scope="module")
def engines(tiny_llama_dir: Path):
    import torch

    from engine.core import EngineCore
    from engine.embedding import EmbeddingEngine

    torch.set_num_threads(1)
    core = EngineCore(tiny_llama_dir, kv_cache_bytes=16 * 1024 * 1024, name=TINY_MODEL)
    core.start()
    emb = EmbeddingEngine()
    trio.run(emb.scale_workers, "all-minilm-l6-v2", 1)
    yield core, emb
    core.stop()
    emb.close()


class StackNode:
    """GossipNode + Orchestrator + Store, started and stopped inside the test's nursery."""

    def __init__(self, net: Net, data_dir: Path, identity: Identity, engines: Any) -> None:
        self.net, self.data_dir, self.identity, self.engines = net, data_dir, identity, engines
        self.gossip: Any = None
        self.orch: Orchestrator | None = None
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None

    async def start(self) -> StackNode:
        core, emb = self.engines
        self.store = Store(self.data_dir)
        self.gossip = await self.net.start(new_node(self.identity, limits=WINDOW), collect=False)

        async def publish(frame: bytes) -> None:
            await self.gossip.publish(frame)

        self.orch = Orchestrator(
            identity=self.identity,
            store=self.store,
            compute=CoreCompute(core, emb, TINY_MODEL),
            publish=publish,
            config=OrchestratorConfig(limits=WINDOW),
        )
        self._scope, self._done = trio.CancelScope(), trio.Event()

        async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with self._scope:
                    await self.orch.run(self.gossip.packets(), task_status=task_status)
            finally:
                self._done.set()

        await self.net.nursery.start(run)
        return self

    async def stop(self) -> None:
        assert self._scope is not None and self._done is not None
        self._scope.cancel()
        await self._done.wait()
        await self.net.stop(self.gossip)
        self.store.close()


def _commits_from(net: Net, peer: Any, node_id: str, rid: str) -> int:
    return sum(
        1
        for p in net.received.get(peer, [])
        if p.sender_id == node_id and p.type is wire.PacketType.INFERENCE_COMMIT and p.body.request_id == rid
    )


def test_request_replayed_minutes_later_from_another_peer_is_processed_once(tmp_path, engines):
    client = Identity.generate()
    frame = wire.encode(
        request_body("What colour is the sky?", quorum=1, max_time_ms=600_000, commit_window_ms=30_000),
        client.signing_key,
        ts_ms=now_ms() - AGE_MS,
    )
    rid = wire.decode(frame, limits=WINDOW).packet_id
    node_identity = Identity.generate()

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            net = Net(nursery)
            first_peer = await net.start(new_node(limits=WINDOW))
            node = await StackNode(net, tmp_path / "node", node_identity, engines).start()
            await first_peer.connect(node.gossip.listen_multiaddrs()[0])
            await first_peer.wait_for_topic_peers(1)

            # The request arrives once and is processed: quorum 1, so this node alone
            # finishes it.
            await first_peer.publish(frame)
            await wait_until(
                lambda: (v := node.orch.get_request(rid)) and v["state"] != "pending", timeout_s=60
            )
            first = node.orch.get_request(rid)
            assert first["state"] == "succeeded", first
            own = node.store.get_inference(rid)
            await wait_until(lambda: _commits_from(net, first_peer, node.identity.node_id, rid) == 1)

            # Another peer replays it while the node still runs: the gossip replay cache
            # stops it before the orchestrator sees it.
            early = await net.start(new_node(limits=WINDOW))
            await early.connect(node.gossip.listen_multiaddrs()[0])
            await early.wait_for_topic_peers(1)
            replays_before = node.gossip.counters.rejected["replay"]
            await early.publish(frame)
            await wait_until(lambda: node.gossip.counters.rejected["replay"] == replays_before + 1)

            # The node restarts (its replay cache is gone); after the request's commit
            # window closed, another peer that captured the frame publishes it again.
            await node.stop()
            node = await StackNode(net, tmp_path / "node", node_identity, engines).start()
            replayer = await net.start(new_node(limits=WINDOW))
            await replayer.connect(node.gossip.listen_multiaddrs()[0])
            await replayer.wait_for_topic_peers(1)
            accepted_before = node.gossip.counters.accepted
            await replayer.publish(frame)
            # The frame passes the gossip layer this time (fresh cache, inside the
            # window): only the store stands between it and a second inference.
            await wait_until(lambda: node.gossip.counters.accepted > accepted_before)
            await wait_until(
                lambda: any(p["packet_id"] == rid for p in node.orch.recent_packets(50)), timeout_s=10
            )
            # The API path too: a duplicate of an accepted request just returns its id.
            assert await node.orch.submit_request(frame) == rid
            await trio.sleep(2.0)  # time for any wrong second inference to start and commit

            again = node.orch.get_request(rid)
            assert again["state"] == "succeeded"
            assert again["finished_at"] == first["finished_at"]
            assert again["answer"] == first["answer"]
            assert [r["request_id"] for r in node.orch.list_requests(100)].count(rid) == 1
            after = node.store.get_inference(rid)
            assert (after.inference_id, after.commit, after.updated_at) == (
                own.inference_id,
                own.commit,
                own.updated_at,
            )
            assert _commits_from(net, replayer, node.identity.node_id, rid) == 0
            assert _commits_from(net, first_peer, node.identity.node_id, rid) == 1
            await node.stop()
            nursery.cancel_scope.cancel()

    run_trio(body, timeout_s=150)
