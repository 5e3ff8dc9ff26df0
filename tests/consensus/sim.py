"""A tiny in-memory network that drives QuorumMachines, for tests.

Every published packet is broadcast to all other nodes after ``latency_ms``; a
``RequestEmbedding`` is answered locally by ``embed`` one ms later. Scripted
adversaries are ordinary machines whose outgoing packets are rewritten.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from consensus import (
    Finished,
    PublishCommit,
    PublishResult,
    PublishReveal,
    PublishRevealRequest,
    QuorumConfig,
    QuorumMachine,
    RequestEmbedding,
    SecurityParams,
)
from consensus.commitments import binary_embedding, inference_id_for, make_commit

REQUEST_ID = hashlib.sha256(b"test request").hexdigest()


def pubkey(i: int) -> bytes:
    return hashlib.sha256(f"node {i}".encode()).digest()


@dataclass
class Node:
    key: bytes
    output: str | None  # None: observer without a model
    done_at_ms: int = 1_000
    # adversary knobs
    reveal_text: str | None = None  # reveal this text instead (with the committed b)
    copy_from: int | None = None  # publish node copy_from's commit and reveal its output
    silent_reveal: bool = False
    machine: QuorumMachine | None = None
    results: list[PublishResult] = field(default_factory=list)


class Sim:
    def __init__(
        self,
        nodes: list[Node],
        embed: Callable[[str], np.ndarray],
        params: SecurityParams,
        config: QuorumConfig | None = None,
        *,
        seed: int = 0,
        latency_ms: int = 5,
        start_ms: int = 0,
    ) -> None:
        self.nodes = nodes
        self.embed = embed
        self.rng = random.Random(seed)
        self.latency = latency_ms
        self.queue: list[tuple[int, int, int, tuple]] = []
        self.seq = 0
        self.sent: list[tuple[int, tuple]] = []
        for n in nodes:
            n.machine, _ = QuorumMachine.start(
                request_id=REQUEST_ID,
                created_at_ms=start_ms,
                params=params,
                own_pubkey=n.key,
                now_ms=start_ms,
                config=config,
            )
            if n.output is not None:
                self._push(n.done_at_ms, nodes.index(n), ("done",))

    def _push(self, t: int, who: int, ev: tuple) -> None:
        # random jitter in the sequence number shuffles same-time deliveries
        self.seq += 1
        heapq.heappush(self.queue, (t, self.rng.random(), self.seq, who, ev))

    def _broadcast(self, t: int, sender: int, pkt: tuple) -> None:
        self.sent.append((t, pkt))
        for j in range(len(self.nodes)):
            if j != sender:
                self._push(t + self.latency + self.rng.randrange(3), j, pkt)

    def _handle(self, t: int, i: int, ev: tuple) -> None:
        node = self.nodes[i]
        m = node.machine
        assert m is not None
        kind = ev[0]
        if kind == "done":
            acts = m.own_inference_done(node.output, self.embed(node.output), t)
        elif kind == "commit":
            acts = m.commit_seen(ev[1], ev[2], ev[3], t)
        elif kind == "rr":
            acts = m.reveal_request_seen(ev[1], ev[2], t)
        elif kind == "reveal":
            acts = m.reveal_seen(ev[1], ev[2], ev[3], ev[4], t)
        elif kind == "emb":
            acts = m.embedding_ready(ev[1], self.embed(ev[2]), t)
        elif kind == "tick":
            acts = m.tick(t)
        else:
            raise AssertionError(kind)
        for a in acts:
            self._act(t, i, a)

    def _act(self, t: int, i: int, a: object) -> None:
        node = self.nodes[i]
        if isinstance(a, PublishCommit):
            commit = a.commit
            if node.copy_from is not None:
                victim = self.nodes[node.copy_from]
                vb = binary_embedding(self.embed(victim.output))
                vid = inference_id_for(REQUEST_ID, victim.key)
                commit = make_commit(vb, victim.key, vid)
            self._broadcast(t, i, ("commit", node.key, a.inference_id, commit))
        elif isinstance(a, PublishRevealRequest):
            self._broadcast(t, i, ("rr", node.key, a.commits))
        elif isinstance(a, PublishReveal):
            if node.silent_reveal:
                return
            output, b = a.output, a.b
            if node.reveal_text is not None:
                output = node.reveal_text
            if node.copy_from is not None:
                victim = self.nodes[node.copy_from]
                output = victim.output
                b = binary_embedding(self.embed(victim.output))
            self._broadcast(t, i, ("reveal", node.key, a.inference_id, output, b))
        elif isinstance(a, RequestEmbedding):
            self._push(t + 1, i, ("emb", a.inference_id, a.output))
        elif isinstance(a, PublishResult):
            node.results.append(a)
        elif isinstance(a, Finished):
            pass

    def run(self, until_ms: int = 200_000, tick_ms: int = 50) -> None:
        next_tick = tick_ms
        while True:
            if self.queue and self.queue[0][0] <= next_tick:
                t, _, _, who, ev = heapq.heappop(self.queue)
                self._handle(t, who, ev)
                continue
            if all(n.machine.final for n in self.nodes) or next_tick > until_ms:
                return
            for i in range(len(self.nodes)):
                self._handle(next_tick, i, ("tick",))
            next_tick += tick_ms
