"""Discrete-event simulation of a rakis network of 100 to 10,000 nodes.

It answers one question: does the network's capacity grow with its nodes, and at
what price in messages, latency and safety? It reuses the project's own rules, not
copies of them: every node whose state decides a request's outcome runs the real
``consensus.quorum.QuorumMachine`` (through ``QuorumAdapter``, the only place that
touches its API), committees come from ``consensus.sortition`` (tickets, water-filled
thresholds, first rounds, widening, the verifier's slack rule), identities are priced
by ``consensus.puzzle`` and weighted by ``consensus.standing``; commits are real
``consensus.commitments`` hashes.

The model (docs/scale.md explains it at length)
- Population: N identities. ``--adversary-share F`` of them belong to one adversary.
  Each honest node has 1-4 workers, a service time (lognormal, median 8 s per
  request), an access latency (lognormal, median 40 ms one way) and a bandwidth
  (lognormal, median 20 Mbit/s); 85% are established (weeks seen, many passed
  re-checks), 15% joined recently. Adversary identities cost one puzzle each; a
  share ``--adversary-aged`` of them were kept honest long enough to earn standing,
  the rest are fresh Sybils. The adversary claims the capacity cap everywhere and
  exploits the verifiers' slack (selects itself at ``slack`` times its probability).
- Churn: each node is offline for a request with probability ``--churn``; peers'
  views of who serves the model still list it (that is what widening is for). Views
  differ: a few views, each missing a random 3% of the peers.
- Per request: the request is flooded to every node (gossip hops ~ log_8 N, each a
  sampled latency); its consensus traffic goes only to the nodes that care (the
  origin, where the client submitted it, and the committee of the open rounds plus
  the next one, which anyone can compute). Without sortition every node cares. Each
  delivery waits access latencies, hops and transmission time at both ends.
- Who runs a real QuorumMachine: the origin and every honest committee member. Without
  sortition at large N that would be N machines each seeing N commits (N^2 per
  request), so only the origin and ``--sampled-machines`` random honest committers run
  one; the other honest committers are scripted: commit when done, reveal when a
  reveal request names them. Every message is still counted for every receiver.
- Adversary kinds (``--adversary-kind``): ``garbage`` commits one shared off-topic
  answer at once and publishes a reveal request for its own commits as soon as it
  holds a quorum of them (the capture attack of issue 15); ``withhold`` commits at once
  and never reveals; ``copy`` commits the first honest output it sees revealed;
  ``mixed`` splits the identities evenly.
- ``--recheck``: the simulated nodes hold the model and re-check every revealed output
  (proof of inference): a reveal that is not a real output of the model (garbage)
  fails and is excluded before clustering. Without it every verdict is
  ``unavailable`` (nodes without the model): the machine falls back to clustering, and
  only the time-boxed commit window stands between a fast garbage quorum and capture.
- Capacity: ``requests_per_s`` is analytic from the simulated per-request costs: the
  smaller of the compute bound (the rate at which the 5% most loaded honest nodes
  saturate their workers) and the bandwidth bound (the rate at which the 5% most
  loaded nodes saturate their links). Latency is measured on the simulated requests,
  arriving as a Poisson stream at ``--load`` times the a-priori capacity, with FIFO
  worker queues at every node.

    python scripts/simulate_network.py --nodes 1000 [--no-sortition] [--adversary-share 0.1]
        [--adversary-kind mixed] [--recheck] [--seed 0] [--requests 200] --json

The last line of output is one JSON object (see ``summarise``).
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus import commitments, puzzle, quorum, sortition, standing  # noqa: E402
from consensus.recheck import RecheckVerdict  # noqa: E402

DAY_S = 86_400.0
EMBED_DIM = 48
TICK_MS = 100  # the daemon's ticker period
SIZES = {"request": 1200, "commit": 420, "rr_base": 200, "rr_entry": 150, "reveal": 1900, "result": 2100}
ADVERSARY_KINDS = ("garbage", "withhold", "copy")


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 1000
    use_sortition: bool = True
    adversary_share: float = 0.0
    adversary_kind: str = "mixed"
    adversary_aged: float = 0.1
    use_standing: bool = True
    recheck: bool = False
    seed: int = 0
    requests: int = 200
    quorum: int = 3
    churn: float = 0.05
    load: float = 0.5
    sampled_machines: int = 8
    views: int = 4
    puzzle_difficulty: int = puzzle.DEFAULT_DIFFICULTY
    puzzle_hash_rate: float = 1.0e6  # hashes/s of one core, measured by scripts/bench_puzzle.py
    max_time_s: float = 120.0
    commit_grace_ms: int = 1_000  # the quorum machine's default; longer emulates time-boxed commits
    sortition_config: sortition.SortitionConfig = field(default_factory=sortition.SortitionConfig)

    def __post_init__(self) -> None:
        if not 10 <= self.nodes <= 100_000:
            raise ValueError("nodes must be in [10, 100000]")
        if not 0.0 <= self.adversary_share < 1.0 or not 0.0 <= self.adversary_aged <= 1.0:
            raise ValueError("adversary_share must be in [0, 1) and adversary_aged in [0, 1]")
        if self.adversary_kind not in (*ADVERSARY_KINDS, "mixed"):
            raise ValueError(f"adversary_kind must be one of {ADVERSARY_KINDS + ('mixed',)}")
        if self.requests < 1 or self.quorum < 1 or not 0.0 <= self.churn < 1.0 or not self.load > 0:
            raise ValueError("requests, quorum >= 1; churn in [0, 1); load > 0")


# ---------------------------------------------------------------- population


@dataclass
class Population:
    pubkeys: list[bytes]
    node_ids: list[str]
    adversary: np.ndarray  # bool
    kind: list[str]  # "honest" or an adversary kind
    workers: np.ndarray
    service_s: np.ndarray
    latency_ms: np.ndarray
    bandwidth_Bps: np.ndarray
    standing: np.ndarray
    claimed_capacity: np.ndarray
    weight: np.ndarray  # as the network sees it (claimed capacity x standing)
    view_of: np.ndarray  # which view each node holds
    views: list[sortition.CommitteeView]

    @property
    def n(self) -> int:
        return len(self.pubkeys)


def build_population(cfg: SimConfig, rng: np.random.Generator) -> Population:
    n = cfg.nodes
    n_adv = int(round(cfg.adversary_share * n))
    adversary = np.zeros(n, dtype=bool)
    adversary[rng.choice(n, n_adv, replace=False)] = True
    pubkeys = [hashlib.sha256(f"sim {cfg.seed} node {i}".encode()).digest() for i in range(n)]
    kinds = []
    adv_seen = 0
    for i in range(n):
        if not adversary[i]:
            kinds.append("honest")
        elif cfg.adversary_kind == "mixed":
            kinds.append(ADVERSARY_KINDS[adv_seen % len(ADVERSARY_KINDS)])
            adv_seen += 1
        else:
            kinds.append(cfg.adversary_kind)
    workers = rng.integers(1, 5, n).astype(float)
    service_s = rng.lognormal(math.log(8.0), 0.4, n)
    latency_ms = rng.lognormal(math.log(40.0), 0.6, n)
    bandwidth = rng.lognormal(math.log(20e6 / 8), 0.7, n)
    st = np.empty(n)
    for i in range(n):
        if adversary[i]:
            aged = rng.random() < cfg.adversary_aged
        else:
            aged = rng.random() < 0.85
        if aged:
            age, passed = rng.uniform(7, 60) * DAY_S, int(rng.integers(20, 300))
        else:
            age, passed = rng.uniform(0, 2) * DAY_S, int(rng.integers(0, 5))
        st[i] = standing.standing(age, passed, 0) if cfg.use_standing else 1.0
    claimed = np.where(adversary, cfg.sortition_config.capacity_cap, workers)
    weight = np.array(
        [sortition.weight(c, s, cfg.sortition_config) for c, s in zip(claimed, st, strict=True)]
    )
    target = sortition.committee_target(cfg.quorum, cfg.sortition_config)
    views = []
    for _ in range(cfg.views):
        known = rng.random(n) >= 0.03
        views.append(
            sortition.CommitteeView(
                {pubkeys[i].hex(): float(weight[i]) for i in range(n) if known[i]},
                target,
                cfg.sortition_config,
            )
        )
    return Population(
        pubkeys=pubkeys,
        node_ids=[k.hex() for k in pubkeys],
        adversary=adversary,
        kind=kinds,
        workers=workers,
        service_s=service_s,
        latency_ms=latency_ms,
        bandwidth_Bps=bandwidth,
        standing=st,
        claimed_capacity=claimed,
        weight=weight,
        view_of=rng.integers(0, cfg.views, n),
        views=views,
    )


# ---------------------------------------------------------------- the quorum machine adapter


class QuorumAdapter:
    """The only code that touches ``consensus.quorum``'s API.

    It turns the machine's actions into plain tuples the simulator routes:
    ("commit", iid, commit) ("rr", [(node_id, iid, commit)]) ("reveal", iid, output, b)
    ("embed", iid, output) ("result", members, output) ("finished", state, output).
    Proof of inference: every node of the simulation holds the model, so each reveal
    gets a re-check verdict, fed back to the machine when it asks (``RequestRecheck``):
    ``recheck_ok`` on the reveal says whether the claimed output is what the model's
    sampler draws (honest) or not (garbage, copies of nothing). Passed outputs score a
    deterministic log-likelihood, so the machine's answer rule runs as in the daemon.
    """

    MODEL = "sim-model"
    MODEL_HASH = "sha256:" + "5" * 64

    def __init__(
        self,
        request_id: str,
        created_ms: int,
        quorum_size: int,
        max_time_ms: int,
        pubkey: bytes,
        now_ms: int,
        commit_grace_ms: int,
        recheck: bool = True,
    ):
        params = quorum.SecurityParams(
            quorum=quorum_size,
            max_time_ms=max_time_ms,
            sec_distance=0.5,
            sec_percentage=1.0,
            accepted_models=(self.MODEL,),
        )
        self._recheck_ok: dict[str, bool] = {}  # output -> what its re-check will say
        self._recheck = recheck  # False: this node cannot re-check (verdicts unavailable)
        self.machine, actions = quorum.QuorumMachine.start(
            request_id=request_id,
            created_at_ms=created_ms,
            params=params,
            own_pubkey=pubkey,
            now_ms=now_ms,
            config=quorum.QuorumConfig(commit_grace_ms=commit_grace_ms),
        )
        self.initial = self._translate(actions, now_ms)

    @property
    def final(self) -> bool:
        return self.machine.final

    def commit_count(self) -> int:
        """Commits the machine counted (for the round-widening decision)."""
        return len(self.machine.commits)

    def wakeup(self) -> int | None:
        return self.machine.next_wakeup_ms()

    def own_done(self, output: str, embedding: np.ndarray, now_ms: int) -> list[tuple]:
        self._recheck_ok.setdefault(output, True)
        return self._translate(
            self.machine.own_inference_done(
                output, embedding, now_ms, model=self.MODEL, model_hash=self.MODEL_HASH
            ),
            now_ms,
        )

    def commit(self, pubkey: bytes, iid: str, commit: bytes, now_ms: int) -> list[tuple]:
        return self._translate(
            self.machine.commit_seen(
                pubkey, iid, commit, now_ms, model=self.MODEL, model_hash=self.MODEL_HASH
            ),
            now_ms,
        )

    def reveal_request(self, pubkey: bytes, refs: list[tuple[str, str, bytes]], now_ms: int) -> list[tuple]:
        crefs = [quorum.CommitRef(n, i, c) for n, i, c in refs]
        return self._translate(self.machine.reveal_request_seen(pubkey, crefs, now_ms), now_ms)

    def reveal(
        self, pubkey: bytes, iid: str, output: str, b: bytes, now_ms: int, recheck_ok: bool
    ) -> list[tuple]:
        # An output's verdict is a property of the output (the model's sampler draws it or
        # not): an honest text revealed by a liar still passes.
        self._recheck_ok[output] = self._recheck_ok.get(output, False) or recheck_ok
        return self._translate(
            self.machine.reveal_seen(
                pubkey, iid, output, b, now_ms, model=self.MODEL, model_hash=self.MODEL_HASH
            ),
            now_ms,
        )

    def embedding(self, iid: str, embedding: np.ndarray, now_ms: int) -> list[tuple]:
        return self._translate(self.machine.embedding_ready(iid, embedding, now_ms), now_ms)

    def tick(self, now_ms: int) -> list[tuple]:
        return self._translate(self.machine.tick(now_ms), now_ms)

    def _verdict(self, output: str) -> RecheckVerdict:
        if not self._recheck:
            return RecheckVerdict.unavailable("model not held")
        if self._recheck_ok.get(output, False):
            return RecheckVerdict("passed", None, -float(len(output)), 0)
        return RecheckVerdict("failed", "token_mismatch", None, 0)

    def _translate(self, actions: list[Any], now_ms: int) -> list[tuple]:
        out: list[tuple] = []
        pending = list(actions)
        while pending:
            a = pending.pop(0)
            if isinstance(a, quorum.RequestRecheck):  # answered at once: the verdict is known
                pending += self.machine.recheck_ready(a.key, self._verdict(a.output), now_ms)
                continue
            if isinstance(a, quorum.PublishCommit):
                out.append(("commit", a.inference_id, a.commit))
            elif isinstance(a, quorum.PublishRevealRequest):
                out.append(("rr", [(r.node_id, r.inference_id, r.commit) for r in a.commits]))
            elif isinstance(a, quorum.PublishReveal):
                out.append(("reveal", a.inference_id, a.output, a.b))
            elif isinstance(a, quorum.RequestEmbedding):
                out.append(("embed", a.inference_id, a.output))
            elif isinstance(a, quorum.PublishResult):
                out.append(("result", a.valid_inferences, a.output))
            elif isinstance(a, quorum.Finished):
                out.append(("finished", a.state, a.output))
        return out


# ---------------------------------------------------------------- one request


@dataclass
class RequestOutcome:
    state: str  # succeeded | captured | blocked
    latency_s: float
    computed: int  # honest nodes that ran the model
    messages: int  # deliveries (each received message counted once per receiver)
    bytes: int
    interested: int
    ignored_commits: int
    rounds: int


class RequestSim:
    """One request's life: the events of the nodes that matter, with real machines."""

    def __init__(self, sim: NetworkSim, index: int, created_ms: int):
        self.sim, self.pop, self.cfg = sim, sim.pop, sim.cfg
        self.rng = sim.rng
        self.created = created_ms
        self.rid = hashlib.sha256(f"sim {self.cfg.seed} request {index}".encode()).hexdigest()
        n = self.pop.n
        self.online = self.rng.random(n) >= self.cfg.churn
        honest_online = np.flatnonzero(self.online & ~self.pop.adversary)
        self.origin = int(self.rng.choice(honest_online))
        self.events: list[tuple[int, int, int, tuple]] = []
        self.seq = 0
        self.machines: dict[int, QuorumAdapter] = {}
        self.next_tick: dict[int, int] = {}
        self.interested: set[int] = {self.origin}
        self.scripted: set[int] = set()  # honest committers without a machine
        self.computing: set[int] = set()
        self.adversary_active: set[int] = set()
        self.outputs: dict[int, tuple[str, np.ndarray]] = {}
        self.garbage_text = f"garbage for {self.rid[:8]}"
        self.garbage_emb = sim.embed(self.garbage_text)
        self.base = self.rng.standard_normal(EMBED_DIM)
        self.published: list[tuple[int, int, tuple]] = []  # (time, sender, message) for late joiners
        self.adv_commits: dict[int, tuple[str, bytes]] = {}
        self.adv_rr_sent = False
        self.adv_revealed: set[int] = set()
        self.copied = False
        self.messages = 0
        self.bytes = 0
        self.ignored = 0
        self.finished: tuple[str, str | None, int] | None = None
        self.hops = max(1, math.ceil(math.log(max(n, 2)) / math.log(8)))
        self.round = 0
        self.max_rounds = self.cfg.sortition_config.max_rounds
        if self.cfg.use_sortition:
            self.tickets = np.array([sortition.ticket(self.rid, k) for k in self.pop.pubkeys])
            self.first = [sortition.first_round(v, self.rid, self.cfg.quorum) for v in self.pop.views]
            self.scale = [v.scale for v in self.pop.views]

    # ---------------------------------------------------------- committee

    def member(self, i: int, round_: int) -> bool:
        """Self-selection of node i at this round offset from its view's first round."""
        if not self.cfg.use_sortition:
            return True
        v = int(self.pop.view_of[i])
        r = min(self.max_rounds, self.first[v] + round_)
        p = sortition.selection_probability(
            float(self.pop.weight[i]), self.scale[v], r, self.cfg.sortition_config
        )
        if self.pop.adversary[i]:  # exploit the verifiers' slack
            p = 1.0 if p >= 1.0 else min(1.0, p * self.cfg.sortition_config.slack)
        return bool(self.tickets[i] < p)

    def claimed_round(self, i: int, round_: int) -> int:
        if not self.cfg.use_sortition:
            return 0
        return min(self.max_rounds, self.first[int(self.pop.view_of[i])] + round_)

    def accept_commit(self, dst: int, src: int, claimed_round: int, now: int) -> bool:
        if not self.cfg.use_sortition:
            return True
        v = int(self.pop.view_of[dst])
        view = self.pop.views[v]
        verdict = sortition.check_commit(
            view,
            self.rid,
            self.pop.pubkeys[src],
            claimed_round=claimed_round,
            claimed_capacity=float(self.pop.claimed_capacity[src]),
            standing=float(self.pop.standing[src]),
            max_round=sortition.max_round_at(self.first[v], self.created, now, self.cfg.sortition_config),
        )
        if not verdict.accepted:
            self.ignored += 1
        return verdict.accepted

    # ---------------------------------------------------------- plumbing

    def push(self, t: int, node: int, ev: tuple) -> None:
        self.seq += 1
        heapq.heappush(self.events, (int(t), self.seq, node, ev))

    def delay_ms(self, src: int, dst: np.ndarray, size: int, flood: bool) -> np.ndarray:
        lat = self.pop.latency_ms
        hops = self.hops if flood else 1
        extra = self.rng.lognormal(math.log(40.0), 0.6, (hops - 1, len(dst))).sum(axis=0) if hops > 1 else 0.0
        tx = size / self.pop.bandwidth_Bps[src] + size / self.pop.bandwidth_Bps[dst]
        return lat[src] + lat[dst] + extra + 1000.0 * tx

    def publish(self, src: int, msg: tuple, size: int, now: int) -> None:
        receivers = len(self.interested) - (1 if src in self.interested else 0)
        if not self.cfg.use_sortition:
            receivers = self.pop.n - 1  # everybody cares (flooded)
        self.messages += receivers
        self.bytes += receivers * size
        self.published.append((now, src, msg))
        dst = np.array(sorted(self.receivers(msg[0]) - {src}), dtype=int)
        if len(dst) == 0:
            return
        delays = self.delay_ms(src, dst, size, flood=not self.cfg.use_sortition)
        for d, dl in zip(dst, delays, strict=True):
            if self.online[d]:
                self.push(now + dl, int(d), ("msg", src, msg))

    def receivers(self, kind: str) -> set[int]:
        """The simulated nodes a message of this kind can change (everyone else only
        counts it): machines take everything, scripted honest nodes and adversaries
        react to reveal requests, copiers to the first honest reveal."""
        out = set(self.machines)
        if kind == "rr":
            out |= self.scripted
            out |= {i for i in self.adversary_active if self.pop.kind[i] in ("garbage", "copy")}
        elif kind == "reveal":
            out |= {
                i for i in self.adversary_active if self.pop.kind[i] == "copy" and i not in self.adv_commits
            }
        return out

    def start_machine(self, i: int, now: int) -> None:
        if i in self.machines:
            return
        ad = QuorumAdapter(
            self.rid,
            self.created,
            self.cfg.quorum,
            int(self.cfg.max_time_s * 1000),
            self.pop.pubkeys[i],
            now,
            self.cfg.commit_grace_ms,
            recheck=self.cfg.recheck,
        )
        self.machines[i] = ad
        self.handle(i, ad.initial, now)
        for t, src, msg in self.published:  # a late joiner syncs what was published so far
            if src != i:
                self.push(
                    max(now, t) + int(self.pop.latency_ms[src] + self.pop.latency_ms[i]), i, ("msg", src, msg)
                )
        self.schedule_tick(i, now)

    def schedule_tick(self, i: int, now: int) -> None:
        """Like the daemon's ticker: tick at the machine's next wakeup, and never more
        often than every ``TICK_MS`` (a wakeup already due is retried a tick later)."""
        w = self.machines[i].wakeup()
        if w is None:
            return
        w = max(w, now + 1) if w > now else now + TICK_MS
        pending = self.next_tick.get(i)
        if pending is None or pending <= now or w < pending:
            self.next_tick[i] = w
            self.push(w, i, ("tick",))

    # ---------------------------------------------------------- joining a round

    def join_round(self, round_: int, now: int) -> None:
        """Open a round: its new members start (honest compute, adversaries act)."""
        self.round = round_
        n = self.pop.n
        for i in range(n):
            if i in self.computing or i in self.adversary_active:
                continue
            if not self.member(i, round_):
                continue
            self.interested.add(i)
            if not self.online[i]:
                continue
            if self.pop.adversary[i]:
                self.adversary_active.add(i)
                self.adversary_start(i, now)
            else:
                self.computing.add(i)
                arrive = now + self.flood_delay(i)
                start = self.sim.queue_start(i, arrive / 1000.0)
                service = self.pop.service_s[i] * self.rng.lognormal(0.0, 0.2)
                self.sim.queue_take(i, start + service)
                self.push(int((start + service) * 1000.0) + 20, i, ("done", round_))
                if (
                    i in self.machines
                    or self.cfg.use_sortition
                    or len(self.machines) < self.cfg.sampled_machines + 1
                ):
                    self.start_machine(i, int(arrive))
                else:
                    self.scripted.add(i)
        # the next round's members listen too (they must see whether the quorum came)
        if self.cfg.use_sortition:
            for i in range(n):
                if self.member(i, round_ + 1):
                    self.interested.add(i)

    def flood_delay(self, i: int) -> float:
        return (
            float(self.delay_ms(self.origin, np.array([i]), SIZES["request"], flood=True)[0])
            if i != self.origin
            else 0.0
        )

    # ---------------------------------------------------------- adversary

    def adversary_start(self, i: int, now: int) -> None:
        kind = self.pop.kind[i]
        t = now + self.flood_delay(i) + 50
        if kind in ("garbage", "withhold"):
            self.push(int(t), i, ("adv_commit",))

    def adversary_commit(self, i: int, now: int, text: str, emb: np.ndarray) -> None:
        pk = self.pop.pubkeys[i]
        iid = commitments.inference_id_for(self.rid, pk)
        b = commitments.binary_embedding(emb)
        c = commitments.make_commit(b, pk, iid)
        self.adv_commits[i] = (iid, c)
        self.outputs[i] = (text, emb)
        self.publish(i, ("commit", iid, c, self.claimed_round(i, self.round)), SIZES["commit"], now)
        garbage = [j for j in self.adv_commits if self.pop.kind[j] in ("garbage", "withhold")]
        if not self.adv_rr_sent and len(garbage) >= self.cfg.quorum:
            # the capture attack: name our own commits at once (coordinated out of band)
            self.adv_rr_sent = True
            refs = [(self.pop.node_ids[j], *self.adv_commits[j]) for j in sorted(garbage)]
            self.publish(
                i,
                ("rr", refs, frozenset(n for n, _, _ in refs)),
                SIZES["rr_base"] + SIZES["rr_entry"] * len(refs),
                now,
            )

    def adversary_react(self, i: int, src: int, msg: tuple, now: int) -> None:
        kind = self.pop.kind[i]
        if msg[0] == "rr" and kind in ("garbage", "copy") and i in self.adv_commits:
            if self.pop.node_ids[i] in msg[2] and i not in self.adv_revealed:
                self.adv_revealed.add(i)
                text, emb = self.outputs[i]
                b = commitments.binary_embedding(emb)
                self.publish(i, ("reveal", self.adv_commits[i][0], text, b), SIZES["reveal"], now)
        elif (
            msg[0] == "reveal"
            and kind == "copy"
            and i not in self.adv_commits
            and not self.pop.adversary[src]
        ):
            text = msg[2]
            self.adversary_commit(i, now, text, self.sim.embed(text))

    # ---------------------------------------------------------- events

    def handle(self, i: int, outs: list[tuple], now: int) -> None:
        for o in outs:
            kind = o[0]
            if kind == "commit":
                self.publish(
                    i, ("commit", o[1], o[2], self.claimed_round(i, self.round)), SIZES["commit"], now
                )
            elif kind == "rr":
                named = frozenset(n for n, _, _ in o[1])
                self.publish(i, ("rr", o[1], named), SIZES["rr_base"] + SIZES["rr_entry"] * len(o[1]), now)
            elif kind == "reveal":
                self.publish(i, ("reveal", o[1], o[2], o[3]), SIZES["reveal"], now)
            elif kind == "embed":
                self.push(now + 30, i, ("embedded", o[1], o[2]))
            elif kind == "result":
                self.publish(i, ("result",), SIZES["result"], now)
            elif kind == "finished" and i == self.origin and self.finished is None:
                self.finished = (o[1], o[2], now)

    def deliver(self, i: int, src: int, msg: tuple, now: int) -> None:
        if i in self.adversary_active:
            self.adversary_react(i, src, msg, now)
            return
        if i in self.scripted:
            if msg[0] == "rr" and self.pop.node_ids[i] in msg[2] and i in self.outputs:
                text, emb = self.outputs.pop(i)
                pk = self.pop.pubkeys[i]
                self.publish(
                    i,
                    (
                        "reveal",
                        commitments.inference_id_for(self.rid, pk),
                        text,
                        commitments.binary_embedding(emb),
                    ),
                    SIZES["reveal"],
                    now,
                )
            return
        ad = self.machines.get(i)
        if ad is None or ad.final:
            return
        pk = self.pop.pubkeys[src]
        if msg[0] == "commit":
            if not self.accept_commit(i, src, msg[3], now):
                return
            outs = ad.commit(pk, msg[1], msg[2], now)
        elif msg[0] == "rr":
            outs = ad.reveal_request(pk, msg[1], now)
        elif msg[0] == "reveal":
            ok = msg[2] != self.garbage_text
            outs = ad.reveal(pk, msg[1], msg[2], msg[3], now, recheck_ok=ok)
        else:
            return
        self.handle(i, outs, now)
        self.schedule_tick(i, now)

    def run(self) -> RequestOutcome:
        self.start_machine(self.origin, self.created)
        self.join_round(0, self.created)
        if self.cfg.use_sortition:
            for r in range(1, self.max_rounds + 1):
                self.push(self.created + r * self.cfg.sortition_config.round_ms, self.origin, ("round", r))
        hard_stop = self.created + int(self.cfg.max_time_s * 1000) + 25_000
        while self.events:
            t, _, i, ev = heapq.heappop(self.events)
            if t > hard_stop and self.finished is not None:
                break
            if ev[0] == "msg":
                self.deliver(i, ev[1], ev[2], t)
            elif ev[0] == "tick":
                ad = self.machines[i]
                if self.next_tick.get(i) == t and not ad.final:
                    self.handle(i, ad.tick(t), t)
                    self.schedule_tick(i, t)
            elif ev[0] == "done":
                text = f"honest answer {self.rid[:8]} by {i}"
                emb = self.base + 0.25 * self.rng.standard_normal(EMBED_DIM)
                self.sim.register(text, emb)
                self.outputs[i] = (text, emb)
                if i in self.machines:
                    self.handle(i, self.machines[i].own_done(text, emb, t), t)
                    self.schedule_tick(i, t)
                elif i in self.scripted:
                    pk = self.pop.pubkeys[i]
                    iid = commitments.inference_id_for(self.rid, pk)
                    c = commitments.make_commit(commitments.binary_embedding(emb), pk, iid)
                    self.publish(i, ("commit", iid, c, 0), SIZES["commit"], t)
            elif ev[0] == "embedded":
                ad = self.machines[i]
                if not ad.final:
                    self.handle(i, ad.embedding(ev[1], self.sim.embed(ev[2]), t), t)
                    self.schedule_tick(i, t)
            elif ev[0] == "adv_commit":
                self.adversary_commit(i, t, self.garbage_text, self.garbage_emb)
            elif ev[0] == "round":
                origin = self.machines[self.origin]
                if not self.finished and not origin.final and origin.commit_count() < self.cfg.quorum:
                    self.join_round(ev[1], t)
        for i in self.scripted:  # every node that runs the request publishes its result
            self.publish(i, ("result",), SIZES["result"], hard_stop)
        state, output, at = self.finished or ("expired", None, self.created)
        if state == "succeeded" and output is not None and output.startswith("honest"):
            verdict = "succeeded"
        elif state == "succeeded":
            verdict = "captured"
        else:
            verdict = "blocked"
        return RequestOutcome(
            verdict,
            (at - self.created) / 1000.0,
            len(self.computing),
            self.messages + self.pop.n - 1,  # plus the request itself, flooded to all
            self.bytes + (self.pop.n - 1) * SIZES["request"],
            len(self.interested),
            self.ignored,
            self.round,
        )


# ---------------------------------------------------------------- the network


class NetworkSim:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.pop = build_population(cfg, self.rng)
        self.queues: dict[int, list[float]] = {}
        self.embeddings: dict[str, np.ndarray] = {}

    def register(self, text: str, emb: np.ndarray) -> None:
        self.embeddings[text] = emb

    def embed(self, text: str) -> np.ndarray:
        """The verifier's own embedding of a text (deterministic, like the real model)."""
        if text not in self.embeddings:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
            self.embeddings[text] = np.random.default_rng(seed).standard_normal(EMBED_DIM)
        return self.embeddings[text]

    def queue_start(self, i: int, arrive_s: float) -> float:
        q = self.queues.setdefault(i, [0.0] * int(self.pop.workers[i]))
        return max(arrive_s, q[0])

    def queue_take(self, i: int, until_s: float) -> None:
        q = self.queues[i]
        heapq.heapreplace(q, until_s)

    def apriori_rate(self) -> float:
        """The compute bound before any request ran (committee of the target size):
        requests arrive at ``load`` times this, so the most loaded nodes keep up."""
        target = sortition.committee_target(self.cfg.quorum, self.cfg.sortition_config)
        return self.compute_bound(target if self.cfg.use_sortition else 1.0)

    def run_shares(self, compute: float) -> np.ndarray:
        """Expected runs per request of each node, given the mean honest compute."""
        pop, cfg = self.pop, self.cfg
        if not cfg.use_sortition:
            return np.ones(pop.n)
        v = pop.views[0]
        p0 = np.array(
            [sortition.selection_probability(float(w), v.scale, 0, cfg.sortition_config) for w in pop.weight]
        )
        honest_mass = float(p0[~pop.adversary].sum()) or 1.0
        return p0 * compute / honest_mass

    def compute_bound(self, compute: float) -> float:
        """The rate at which the 5% most loaded honest nodes saturate their workers."""
        honest = ~self.pop.adversary
        hs = self.run_shares(compute)[honest]
        node_rate = (self.pop.workers / self.pop.service_s)[honest]
        return float(np.quantile(node_rate[hs > 0] / hs[hs > 0], 0.05)) * (1 - self.cfg.churn)

    def run(self) -> list[RequestOutcome]:
        rate = self.cfg.load * self.apriori_rate()
        t_ms = 0.0
        out = []
        for j in range(self.cfg.requests):
            t_ms += self.rng.exponential(1000.0 / rate)
            out.append(RequestSim(self, j, int(t_ms)).run())
        return out

    def capacity(self, outs: list[RequestOutcome]) -> dict[str, float]:
        """Analytic sustainable rate from the simulated per-request costs."""
        pop, cfg = self.pop, self.cfg
        compute = float(np.mean([o.computed for o in outs]))
        share = self.run_shares(compute)
        compute_bound = self.compute_bound(compute)
        interested = np.mean([o.interested for o in outs])
        bytes_per_request = np.mean([o.bytes for o in outs])
        per_interested = (bytes_per_request - (pop.n - 1) * SIZES["request"]) / max(interested, 1.0)
        if cfg.use_sortition:
            q = np.minimum(1.0, share * interested / max(compute, 1e-9))
        else:
            q = np.ones(pop.n)
        node_bytes = SIZES["request"] + q * per_interested
        bandwidth_bound = float(np.quantile(pop.bandwidth_Bps / node_bytes, 0.05))
        return {"compute_bound": compute_bound, "bandwidth_bound": bandwidth_bound}


def summarise(cfg: SimConfig, sim: NetworkSim, outs: list[RequestOutcome], wall_s: float) -> dict[str, Any]:
    cap = sim.capacity(outs)
    ok = [o.latency_s for o in outs if o.state == "succeeded"]
    n_adv = int(sim.pop.adversary.sum())
    weight_share = float(sim.pop.weight[sim.pop.adversary].sum() / max(sim.pop.weight.sum(), 1e-12))
    puzzle_s = puzzle.expected_hashes(cfg.puzzle_difficulty) / cfg.puzzle_hash_rate
    return {
        "nodes": cfg.nodes,
        "sortition": cfg.use_sortition,
        "adversary_share": cfg.adversary_share,
        "adversary_kind": cfg.adversary_kind,
        "recheck": cfg.recheck,
        "commit_grace_ms": cfg.commit_grace_ms,
        "standing": cfg.use_standing,
        "seed": cfg.seed,
        "requests": len(outs),
        "requests_per_s": min(cap["compute_bound"], cap["bandwidth_bound"]),
        "compute_bound_per_s": cap["compute_bound"],
        "bandwidth_bound_per_s": cap["bandwidth_bound"],
        "compute_per_request": float(np.mean([o.computed for o in outs])),
        "messages_per_node_per_request": float(np.mean([o.messages for o in outs]) / cfg.nodes),
        "bytes_per_node_per_request": float(np.mean([o.bytes for o in outs]) / cfg.nodes),
        "p50_latency_s": float(np.quantile(ok, 0.5)) if ok else None,
        "p99_latency_s": float(np.quantile(ok, 0.99)) if ok else None,
        "captured_share": sum(o.state == "captured" for o in outs) / len(outs),
        "blocked_share": sum(o.state == "blocked" for o in outs) / len(outs),
        "widened_share": sum(o.rounds > 0 for o in outs) / len(outs),
        "ignored_commits_per_request": float(np.mean([o.ignored_commits for o in outs])),
        "adversary_identities": n_adv,
        "adversary_weight_share": weight_share,
        "adversary_puzzle_core_hours": n_adv * puzzle_s / 3600.0,
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description="Simulate a rakis network (see the module docstring).")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--no-sortition", action="store_true")
    ap.add_argument("--adversary-share", type=float, default=0.0)
    ap.add_argument("--adversary-kind", default="mixed", choices=(*ADVERSARY_KINDS, "mixed"))
    ap.add_argument(
        "--adversary-aged", type=float, default=0.1, help="share of adversary ids with earned standing"
    )
    ap.add_argument("--no-standing", action="store_true", help="every identity weighs 1 (standing off)")
    ap.add_argument("--recheck", action="store_true", help="emulate proof-of-inference re-checks (issue 15)")
    ap.add_argument(
        "--commit-grace-ms",
        type=int,
        default=1_000,
        help="QuorumConfig.commit_grace_ms (commits stay open this long after the first reveal request)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--requests", type=int, default=None, help="default 200 (20000/N, at least 8, without sortition)"
    )
    ap.add_argument("--quorum", type=int, default=3)
    ap.add_argument("--churn", type=float, default=0.05)
    ap.add_argument("--load", type=float, default=0.5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    # Without sortition a request costs O(N) machine events: fewer requests at large N.
    requests = args.requests or (200 if not args.no_sortition else max(8, min(200, 20_000 // args.nodes)))
    cfg = SimConfig(
        nodes=args.nodes,
        use_sortition=not args.no_sortition,
        adversary_share=args.adversary_share,
        adversary_kind=args.adversary_kind,
        adversary_aged=args.adversary_aged,
        use_standing=not args.no_standing,
        recheck=args.recheck,
        commit_grace_ms=args.commit_grace_ms,
        seed=args.seed,
        requests=requests,
        quorum=args.quorum,
        churn=args.churn,
        load=args.load,
    )
    t0 = time.perf_counter()
    sim = NetworkSim(cfg)
    outs = sim.run()
    result = summarise(cfg, sim, outs, time.perf_counter() - t0)
    if not args.json:
        for k, v in result.items():
            print(f"{k:32s} {v}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
