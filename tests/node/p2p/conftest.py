"""Helpers for gossip tests: real libp2p hosts on 127.0.0.1 inside one trio run.

Each test body runs under `trio.fail_after`, and every node is started inside a
nursery that cancels (and so stops) it when the test ends, pass or fail.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from node import wire
from node.identity import Identity
from node.p2p.config import local_config
from node.p2p.gossip import GossipNode

TEST_TIMEOUT_S = 40.0


def run_trio(fn: Callable[[], Awaitable[Any]], timeout_s: float = TEST_TIMEOUT_S) -> Any:
    async def main() -> Any:
        with trio.fail_after(timeout_s):
            return await fn()

    return trio.run(main)


def request_body(tag: str, limits: wire.WireLimits = wire.DEFAULT_LIMITS) -> wire.InferenceRequest:
    raw = {
        "prompt": tag,
        "accepted_models": ["m"],
        "temperature": 0.0,
        "max_tokens": 8,
        "security_frame": {
            "quorum": 1,
            "max_time_ms": 60_000,
            "sec_distance": 0.1,
            "sec_percentage": 0.5,
            "embedding_model": "e",
        },
    }
    return wire.InferenceRequest.model_validate(raw, context={"limits": limits})


def new_node(identity: Identity | None = None, **overrides: Any) -> GossipNode:
    settings: dict[str, Any] = {"status_interval_s": 0.5, "heartbeat_s": 0.5}
    settings.update(overrides)
    return GossipNode(identity or Identity.generate(), local_config(**settings))


class Net:
    """Starts and stops nodes inside one nursery; collects what each node receives."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.received: dict[GossipNode, list[wire.SignedPacket]] = {}
        self._scopes: dict[GossipNode, trio.CancelScope] = {}
        self._done: dict[GossipNode, trio.Event] = {}

    async def start(self, node: GossipNode, *, collect: bool = True) -> GossipNode:
        done = trio.Event()

        async def _run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with trio.CancelScope() as scope:
                    self._scopes[node] = scope
                    await node.run(task_status=task_status)
            finally:
                done.set()

        self._done[node] = done
        await self.nursery.start(_run)
        if collect:
            self.received.setdefault(node, [])
            self.nursery.start_soon(self._collect, node)
        return node

    async def _collect(self, node: GossipNode) -> None:
        async for packet in node.packets():
            self.received[node].append(packet)

    async def stop(self, node: GossipNode) -> None:
        self._scopes[node].cancel()
        with trio.fail_after(10):
            await self._done[node].wait()
        assert not node.is_running

    def prompts(self, node: GossipNode) -> list[str]:
        return [
            p.body.prompt for p in self.received.get(node, []) if p.type is wire.PacketType.INFERENCE_REQUEST
        ]


async def line(net: Net, nodes: list[GossipNode]) -> None:
    """Connect nodes[i] -> nodes[i+1] and wait until every link carries the topic."""
    for a, b in zip(nodes, nodes[1:], strict=False):
        await a.connect(b.listen_multiaddrs()[0])
    for i, node in enumerate(nodes):
        await node.wait_for_topic_peers(1 if i in (0, len(nodes) - 1) else 2)


async def wait_until(pred: Callable[[], bool], timeout_s: float = 10.0, step_s: float = 0.05) -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(step_s)


@pytest.fixture(autouse=True)
def _no_leaked_threads():
    """Every test must stop what it started, including libp2p's seen-cache threads."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leaked = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
