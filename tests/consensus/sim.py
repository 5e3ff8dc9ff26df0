"""A tiny in-memory network that drives QuorumMachines, for tests.

Every published packet is broadcast to all other nodes after ``latency_ms``; a
``RequestEmbedding`` is answered locally by ``embed`` one ms later, a
``RequestRecheck`` by ``truth`` (the stand-in for the engine's teacher-forced
re-check) ``recheck_ms`` later, or ``unavailable`` at once on a node that does not
hold the model. Scripted adversaries are ordinary machines whose outgoing packets are
rewritten:

- ``reveal_text``: reveal another text with the committed sign bits;
- ``copy_from``: publish another node's commit bytes and reveal its output;
- ``silent_reveal``: never reveal;
- ``claim_hash`` / ``reveal_hash``: put another weights hash in the commit / reveal;
- ``eager``: the fast capture: reveal at once after committing and publish a reveal
  request naming every eager node's commit (as the attacker of issue 15 did);
- ``copy_after_reveal``: commit (under its own key) to the first honest output it sees
  revealed, as late as the window allows.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from consensus import (
    CommitRef,
    Finished,
    PublishCommit,
    PublishResult,
    PublishReveal,
    PublishRevealRequest,
    QuorumConfig,
    QuorumMachine,
    RecheckVerdict,
    RequestEmbedding,
    RequestRecheck,
    SecurityParams,
)
from consensus.commitments import binary_embedding, inference_id_for, make_commit

REQUEST_ID = hashlib.sha256(b"test request").hexdigest()
MODEL = "smollm2-135m"
HASH_A = "sha256:" + hashlib.sha256(b"weights A").hexdigest()  # the accepted weights
HASH_B = "sha256:" + hashlib.sha256(b"weights B").hexdigest()  # some other model's
ACCEPTED = (f"{MODEL}@{HASH_A}",)

Truth = Callable[[str, str], RecheckVerdict]


def pubkey(i: int) -> bytes:
    return hashlib.sha256(f"node {i}".encode()).digest()


def passes_if(honest: Callable[[str], bool], ll: Callable[[str], float] | None = None) -> Truth:
    """A re-check oracle: outputs for which ``honest`` holds pass under HASH_A (with
    log-likelihood ``ll(text)``, default minus the word count), everything else fails."""

    def truth(output: str, model_hash: str) -> RecheckVerdict:
        if model_hash != HASH_A:
            return RecheckVerdict("failed", "token_mismatch at 0 (other weights)")
        if not honest(output):
            return RecheckVerdict("failed", "token_mismatch at 0", -500.0, 0)
        return RecheckVerdict("passed", None, ll(output) if ll else -float(len(output.split())), 0)

    return truth


@dataclass
class Node:
    key: bytes
    output: str | None  # None: observer without a model
    done_at_ms: int = 1_000
    holds_model: bool = True  # False: feeds `unavailable` for every re-check
    # adversary knobs (see module docstring)
    reveal_text: str | None = None
    copy_from: int | None = None
    silent_reveal: bool = False
    claim_hash: str | None = None
    reveal_hash: str | None = None
    eager: bool = False
    copy_after_reveal: bool = False
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
        truth: Truth | None = None,
        seed: int = 0,
        latency_ms: int = 5,
        start_ms: int = 0,
        recheck_ms: int = 3,
    ) -> None:
        self.nodes = nodes
        self.embed = embed
        self.truth = truth
        self.rng = random.Random(seed)
        self.latency = latency_ms
        self.recheck_ms = recheck_ms
        self.queue: list[tuple] = []
        self.seq = 0
        self.sent: list[tuple[int, tuple]] = []
        self.rechecks: list[tuple[int, str]] = []  # (node index, key) asked
        for n in nodes:
            n.machine, _ = QuorumMachine.start(
                request_id=REQUEST_ID,
                created_at_ms=start_ms,
                params=params,
                own_pubkey=n.key,
                now_ms=start_ms,
                config=config,
            )
            if n.output is not None and not n.copy_after_reveal:
                self._push(n.done_at_ms, nodes.index(n), ("done", n.output))

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
            if m.own is not None:
                return
            acts = m.own_inference_done(ev[1], self.embed(ev[1]), t, model=MODEL, model_hash=HASH_A)
        elif kind == "commit":
            acts = m.commit_seen(ev[1], ev[2], ev[3], t, model=ev[4], model_hash=ev[5])
        elif kind == "rr":
            acts = m.reveal_request_seen(ev[1], ev[2], t)
        elif kind == "reveal":
            if node.copy_after_reveal and node.machine.own is None and ev[3] != node.output:
                self._push(t, i, ("done", ev[3]))  # commit the copied text at once
            acts = m.reveal_seen(ev[1], ev[2], ev[3], ev[4], t, model=ev[5], model_hash=ev[6])
        elif kind == "emb":
            acts = m.embedding_ready(ev[1], self.embed(ev[2]), t)
        elif kind == "verdict":
            acts = m.recheck_ready(ev[1], ev[2], t)
        elif kind == "tick":
            acts = m.tick(t)
        elif kind == "eager_rr":
            refs = tuple(
                CommitRef(p[1].hex(), p[2], p[3])
                for _, p in self.sent
                if p[0] == "commit" and any(n.eager and n.key == p[1] for n in self.nodes)
            )
            self._broadcast(t, i, ("rr", node.key, refs))
            return
        else:
            raise AssertionError(kind)
        for a in acts:
            self._act(t, i, a)

    def _verdict(self, node: Node, a: RequestRecheck) -> RecheckVerdict:
        if not node.holds_model or self.truth is None:
            return RecheckVerdict.unavailable()
        return self.truth(a.output, a.model_hash)

    def _act(self, t: int, i: int, a: object) -> None:
        node = self.nodes[i]
        if isinstance(a, PublishCommit):
            commit, mhash = a.commit, node.claim_hash or a.model_hash
            if node.copy_from is not None:
                victim = self.nodes[node.copy_from]
                vb = binary_embedding(self.embed(victim.output))
                vid = inference_id_for(REQUEST_ID, victim.key)
                commit = make_commit(vb, victim.key, vid)
            self._broadcast(t, i, ("commit", node.key, a.inference_id, commit, a.model, mhash))
            if node.eager:
                own = node.machine.own
                self._broadcast(
                    t + 1, i, ("reveal", node.key, own.inference_id, own.output, own.b, a.model, mhash)
                )
                self._push(t + 5, i, ("eager_rr",))
        elif isinstance(a, PublishRevealRequest):
            self._broadcast(t, i, ("rr", node.key, a.commits))
        elif isinstance(a, PublishReveal):
            if node.silent_reveal or node.eager:
                return
            output, b = a.output, a.b
            mhash = node.reveal_hash or node.claim_hash or a.model_hash
            if node.reveal_text is not None:
                output = node.reveal_text
            if node.copy_from is not None:
                victim = self.nodes[node.copy_from]
                output = victim.output
                b = binary_embedding(self.embed(victim.output))
            self._broadcast(t, i, ("reveal", node.key, a.inference_id, output, b, a.model, mhash))
        elif isinstance(a, RequestEmbedding):
            self._push(t + 1, i, ("emb", a.inference_id, a.output))
        elif isinstance(a, RequestRecheck):
            self.rechecks.append((i, a.key))
            delay = self.recheck_ms if node.holds_model else 0
            self._push(t + delay, i, ("verdict", a.key, self._verdict(node, a)))
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
