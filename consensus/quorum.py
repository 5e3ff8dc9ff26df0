"""Per-request quorum state machine: commits -> reveal request -> reveals -> result.

The daemon owns the network, the clock, the embedding engine and persistence; this
machine owns the rules. Each event method takes the event's receive time (unix ms)
and returns the actions the daemon must carry out. It never reads a clock itself, so
it is deterministic and replayable.

Rules enforced here
- One counted commit per node: the inference id must be derived from the sender's
  key (``inference_id_for``) and only the node's first commit counts; a conflicting
  second one is recorded as equivocation and ignored.
- Commit deadline: ``min(ending_at, first valid reveal request + commit_grace_ms)``.
  Commits arriving later are ignored. Closing the commit phase soon after the reveal
  request stops a lazy node from copying a revealed output and committing it.
- Reveals only for commits named in a valid reveal request (and counted here), one
  per node, before the reveal deadline ``min(first valid reveal request, ending_at) +
  reveal_window_ms``. Missing reveals are counted for reputation.
- Verification: the hash opening is checked on receipt; then the daemon is asked for
  the verifier's own embedding of the output (priority work) and the sign bits are
  compared (``verification``). Only the verifier's own embeddings are clustered.
- Final states: ``succeeded``, ``failed:not_enough_commits``,
  ``failed:not_enough_valid_reveals``, ``failed:no_cluster_of_needed_size`` and
  ``expired`` (the request was already past ``ending_at`` when seen, or no decision
  could be made by the hard stop ``ending_at + reveal_window + consensus_window``).
  Events after a final state change nothing.

Who publishes the reveal request, and how nodes converge on one commit set
Any node may publish one, at most once: when it has counted ``quorum`` commits and
``reveal_request_grace_ms`` has passed without a valid reveal request naming all the
commits it counted (or at ``ending_at``). Reveal requests are *triggers and
references*, never the authority on a commit: an entry only counts when it matches
the commit this node counted from the committer's own signed commit packet, so a
malicious publisher cannot name a fake commit for an honest node (its reveal would
not open it) or invent nodes. A reveal request is *valid* when at least ``quorum`` of
its entries match counted commits; invalid ones are kept and re-evaluated as commits
arrive (gossip may deliver the request before the commits). The set of commits that
take part is the union of the matching entries of all valid reveal requests: so
duplicate or conflicting reveal requests are harmless (a union is order-independent),
and every node reveals once (a reveal is one broadcast packet) when any valid request
names it. Honest nodes that received the same commits before their deadline take
part with the same set; a commit that reached only some nodes in time can make their
sets differ, which is why the representative is chosen from the cluster members'
commits only (``pick_representative``) and the result names its members.

Restart: ``to_dict()`` / ``QuorumMachine.from_dict()`` give a JSON-safe snapshot,
including which actions were already emitted, so a restored machine does not publish
twice. Replaying the persisted events in order into a fresh machine gives the same
state too (the daemon should drop replayed ``Publish*`` actions it already sent).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from consensus.clustering import (
    ConsensusOutcome,
    find_consensus,
    joint_hash,
    pick_representative,
)
from consensus.commitments import binary_embedding, hamming, inference_id_for, make_commit
from consensus.verification import (
    DEFAULT_HAMMING_TOLERANCE,
    Rejection,
    RejectReason,
    check_opening,
)

__all__ = [
    "Action",
    "CommitRef",
    "Finished",
    "PublishCommit",
    "PublishRejection",
    "PublishResult",
    "PublishReveal",
    "PublishRevealRequest",
    "QuorumConfig",
    "QuorumMachine",
    "RequestEmbedding",
    "SecurityParams",
]

SUCCEEDED = "succeeded"
EXPIRED = "expired"
FAILED_NOT_ENOUGH_COMMITS = "failed:not_enough_commits"


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    """Windows and tolerances the daemon fills from its settings (all ms)."""

    reveal_request_grace_ms: int = 500
    commit_grace_ms: int = 1_000
    reveal_window_ms: int = 10_000
    consensus_window_ms: int = 10_000
    hamming_tolerance: int = DEFAULT_HAMMING_TOLERANCE
    max_commits: int = 256

    def __post_init__(self) -> None:
        for name in ("reveal_request_grace_ms", "commit_grace_ms", "reveal_window_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.consensus_window_ms < 0 or self.hamming_tolerance < 0 or self.max_commits < 1:
            raise ValueError("consensus_window_ms, hamming_tolerance must be >= 0, max_commits >= 1")


@dataclass(frozen=True, slots=True)
class SecurityParams:
    """The request's security frame, as far as consensus needs it."""

    quorum: int
    max_time_ms: int
    sec_distance: float
    sec_percentage: float

    def __post_init__(self) -> None:
        if self.quorum < 1 or self.max_time_ms <= 0:
            raise ValueError("quorum must be >= 1 and max_time_ms > 0")
        if not 0.0 <= self.sec_distance <= 2.0 or not 0.0 < self.sec_percentage <= 1.0:
            raise ValueError("sec_distance must be in [0, 2] and sec_percentage in (0, 1]")


# ---------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class CommitRef:
    """One entry of a reveal request; ``node_id`` is the committer's key in hex."""

    node_id: str
    inference_id: str
    commit: bytes


@dataclass(frozen=True, slots=True)
class PublishCommit:
    request_id: str
    inference_id: str
    commit: bytes


@dataclass(frozen=True, slots=True)
class PublishRevealRequest:
    request_id: str
    commits: tuple[CommitRef, ...]


@dataclass(frozen=True, slots=True)
class PublishReveal:
    request_id: str
    inference_id: str
    output: str
    b: bytes


@dataclass(frozen=True, slots=True)
class RequestEmbedding:
    """Embed ``output`` (verification priority) and call ``embedding_ready``."""

    request_id: str
    inference_id: str
    output: str
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class PublishRejection:
    request_id: str
    inference_id: str
    node_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The verifier's result (``inference_quorum_computed``)."""

    request_id: str
    valid_inferences: tuple[str, ...]
    joint_hash: str
    output: str
    representative: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The machine reached a final state; persist it and tell waiting clients."""

    request_id: str
    state: str
    members: tuple[str, ...]
    output: str | None


Action = (
    PublishCommit
    | PublishRevealRequest
    | PublishReveal
    | RequestEmbedding
    | PublishRejection
    | PublishResult
    | Finished
)


# ---------------------------------------------------------------- state records


@dataclass(slots=True)
class _Commit:
    inference_id: str
    commit: bytes
    at_ms: int


@dataclass(slots=True)
class _Reveal:
    inference_id: str
    output: str
    b: bytes
    at_ms: int
    status: str = "parked"  # parked (not named yet) | pending | accepted | rejected
    reason: str | None = None
    embedding: list[float] | None = None


@dataclass(slots=True)
class _Own:
    inference_id: str
    output: str
    b: bytes
    commit: bytes
    embedding: list[float]


def _b64(x: bytes) -> str:
    return base64.b64encode(x).decode("ascii")


def _unb64(x: str) -> bytes:
    return base64.b64decode(x.encode("ascii"), validate=True)


def _pub(node_id: str) -> bytes:
    return bytes.fromhex(node_id)


@dataclass(slots=True)
class QuorumMachine:
    """One request's consensus state as seen by one node (see module docstring)."""

    request_id: str
    created_at_ms: int
    params: SecurityParams
    own_pubkey: bytes
    config: QuorumConfig = field(default_factory=QuorumConfig)
    seen_at_ms: int = 0
    state: str = "collecting"
    commits: dict[str, _Commit] = field(default_factory=dict)
    equivocations: dict[str, int] = field(default_factory=dict)
    reveal_requests: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)
    first_valid_rr_ms: int | None = None
    quorum_at_ms: int | None = None
    reveals: dict[str, _Reveal] = field(default_factory=dict)
    own: _Own | None = None
    published_commit: bool = False
    published_rr: bool = False
    published_reveal: bool = False
    outcome_members: tuple[str, ...] = ()
    result_output: str | None = None
    representative: str | None = None
    _named: frozenset[str] | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------ construction

    @classmethod
    def start(
        cls,
        *,
        request_id: str,
        created_at_ms: int,
        params: SecurityParams,
        own_pubkey: bytes,
        now_ms: int,
        config: QuorumConfig | None = None,
    ) -> tuple[QuorumMachine, list[Action]]:
        """Event *request seen*: a new machine, already ``expired`` if past its deadline."""
        if len(own_pubkey) != 32:
            raise ValueError("own_pubkey must be 32 raw bytes")
        m = cls(
            request_id=request_id,
            created_at_ms=created_at_ms,
            params=params,
            own_pubkey=bytes(own_pubkey),
            config=config or QuorumConfig(),
            seen_at_ms=now_ms,
        )
        if now_ms >= m.ending_at_ms:
            return m, m._finish(EXPIRED)
        return m, []

    # ------------------------------------------------------------ derived times

    @property
    def ending_at_ms(self) -> int:
        return self.created_at_ms + self.params.max_time_ms

    @property
    def own_node_id(self) -> str:
        return self.own_pubkey.hex()

    @property
    def final(self) -> bool:
        return self.state in (SUCCEEDED, EXPIRED) or self.state.startswith("failed:")

    @property
    def commit_deadline_ms(self) -> int:
        if self.first_valid_rr_ms is None:
            return self.ending_at_ms
        return min(self.ending_at_ms, self.first_valid_rr_ms + self.config.commit_grace_ms)

    @property
    def reveal_deadline_ms(self) -> int | None:
        if self.first_valid_rr_ms is None:
            return None
        return min(self.first_valid_rr_ms, self.ending_at_ms) + self.config.reveal_window_ms

    @property
    def hard_stop_ms(self) -> int:
        return self.ending_at_ms + self.config.reveal_window_ms + self.config.consensus_window_ms

    def next_wakeup_ms(self) -> int | None:
        """When the daemon should next call ``tick`` (None once final)."""
        if self.final:
            return None
        times = [self.hard_stop_ms, self.ending_at_ms]
        if self.quorum_at_ms is not None and not self.published_rr:
            times.append(self.quorum_at_ms + self._rr_delay_ms())
        if self.first_valid_rr_ms is not None:
            times.append(self.commit_deadline_ms)
            rd = self.reveal_deadline_ms
            assert rd is not None
            times += [rd, rd + self.config.consensus_window_ms]
        return min(times)

    # ------------------------------------------------------------ events

    def own_inference_done(self, output: str, embedding: np.ndarray, now_ms: int) -> list[Action]:
        """Event: our own inference and its embedding are ready; commit if still in time."""
        if self.final or self.own is not None:
            return []
        if now_ms >= self.commit_deadline_ms:
            return self.tick(now_ms)
        b = binary_embedding(embedding)
        iid = inference_id_for(self.request_id, self.own_pubkey)
        commit = make_commit(b, self.own_pubkey, iid)
        emb = [float(x) for x in np.asarray(embedding, dtype=np.float64)]
        self.own = _Own(iid, output, b, commit, emb)
        self.published_commit = True
        actions: list[Action] = [PublishCommit(self.request_id, iid, commit)]
        actions += self.commit_seen(self.own_pubkey, iid, commit, now_ms)
        return actions

    def commit_seen(self, node_pubkey: bytes, inference_id: str, commit: bytes, now_ms: int) -> list[Action]:
        """Event: a signed commit packet from ``node_pubkey`` (signature already checked)."""
        if self.final:
            return []
        actions = self.tick(now_ms)
        if self.final or now_ms >= self.commit_deadline_ms:
            return actions
        if len(node_pubkey) != 32 or not isinstance(commit, bytes | bytearray) or len(commit) != 32:
            return actions
        if inference_id != inference_id_for(self.request_id, node_pubkey):
            return actions
        node_id = bytes(node_pubkey).hex()
        known = self.commits.get(node_id)
        if known is not None:
            if known.commit != bytes(commit):
                self.equivocations[node_id] = self.equivocations.get(node_id, 0) + 1
            return actions
        if len(self.commits) >= self.config.max_commits:
            return actions
        self.commits[node_id] = _Commit(inference_id, bytes(commit), now_ms)
        self._named = None
        if self.quorum_at_ms is None and len(self.commits) >= self.params.quorum:
            self.quorum_at_ms = now_ms
        return actions + self._progress(now_ms)

    def reveal_request_seen(
        self, sender_pubkey: bytes, commits: Sequence[CommitRef], now_ms: int
    ) -> list[Action]:
        """Event: a reveal request; only the first one per sender is kept."""
        if self.final:
            return []
        actions = self.tick(now_ms)
        if self.final:
            return actions
        rd = self.reveal_deadline_ms
        if rd is not None and now_ms >= rd:
            return actions
        sender = bytes(sender_pubkey).hex()
        if sender in self.reveal_requests:
            return actions
        entries = []
        for ref in commits[: self.config.max_commits]:
            entries.append((str(ref.node_id).lower(), str(ref.inference_id), bytes(ref.commit)))
        self.reveal_requests[sender] = entries
        self._named = None
        return actions + self._progress(now_ms)

    def reveal_seen(
        self, node_pubkey: bytes, inference_id: str, output: str, b: bytes, now_ms: int
    ) -> list[Action]:
        """Event: a signed reveal from ``node_pubkey``; one per node, before the deadline."""
        if self.final:
            return []
        actions = self.tick(now_ms)
        if self.final:
            return actions
        rd = self.reveal_deadline_ms
        if rd is not None and now_ms >= rd:
            return actions
        node_id = bytes(node_pubkey).hex()
        if node_id in self.reveals or node_id not in self.commits:
            return actions
        if not isinstance(output, str) or not isinstance(b, bytes | bytearray):
            return actions
        self.reveals[node_id] = _Reveal(inference_id, output, bytes(b), now_ms)
        return actions + self._progress(now_ms)

    def embedding_ready(self, inference_id: str, embedding: np.ndarray, now_ms: int) -> list[Action]:
        """Event: our own embedding of a revealed output (asked by ``RequestEmbedding``)."""
        if self.final:
            return []
        actions: list[Action] = []
        for node_id, rv in self.reveals.items():
            if rv.inference_id != inference_id or rv.status != "pending":
                continue
            own_b = binary_embedding(embedding)
            if len(own_b) != len(rv.b):
                rej = Rejection(inference_id, RejectReason.bad_binary_embedding, "length differs")
            elif (d := hamming(own_b, rv.b)) > self.config.hamming_tolerance:
                rej = Rejection(
                    inference_id,
                    RejectReason.embedding_mismatch,
                    f"{d} bits differ (tolerance {self.config.hamming_tolerance})",
                    d,
                )
            else:
                rej = None
            if rej is None:
                rv.status = "accepted"
                rv.embedding = [float(x) for x in np.asarray(embedding, dtype=np.float64)]
            else:
                actions += self._reject(node_id, rv, rej)
        return actions + self.tick(now_ms)

    def tick(self, now_ms: int) -> list[Action]:
        """Event: time passed (deadlines)."""
        if self.final:
            return []
        return self._progress(now_ms)

    # ------------------------------------------------------------ internals

    def _matching(self, entries: Iterable[tuple[str, str, bytes]]) -> set[str]:
        out = set()
        for node_id, iid, commit in entries:
            c = self.commits.get(node_id)
            if c is not None and c.inference_id == iid and c.commit == commit:
                out.add(node_id)
        return out

    def named(self) -> frozenset[str]:
        """Counted commits named by at least one valid reveal request (cached: it is
        read on every event and only changes when a commit or reveal request is added)."""
        if self._named is None:
            names: set[str] = set()
            for entries in self.reveal_requests.values():
                match = self._matching(entries)
                if len(match) >= self.params.quorum:
                    names |= match
            self._named = frozenset(names)
        return self._named

    def _rr_delay_ms(self) -> int:
        """Grace plus a per-node deterministic jitter in [0, grace], so that usually one
        node publishes the reveal request first and the others see it and stay quiet."""
        grace = self.config.reveal_request_grace_ms
        h = hashlib.sha256(self.request_id.encode("ascii") + self.own_pubkey).digest()
        return grace + int.from_bytes(h[:4], "big") % (grace + 1)

    def _reject(self, node_id: str, rv: _Reveal, rej: Rejection) -> list[Action]:
        rv.status = "rejected"
        rv.reason = str(rej.reason)
        return [PublishRejection(self.request_id, rv.inference_id, node_id, str(rej.reason), rej.detail)]

    def _progress(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        if now_ms >= self.hard_stop_ms:
            return actions + self._decide_or(EXPIRED)
        named = self.named()
        if named and self.first_valid_rr_ms is None:
            self.first_valid_rr_ms = now_ms
        # Our own reveal request: once, after the grace, unless one already covers us.
        if (
            not self.published_rr
            and len(self.commits) >= self.params.quorum
            and self.quorum_at_ms is not None
            and (now_ms >= self.quorum_at_ms + self._rr_delay_ms() or now_ms >= self.ending_at_ms)
            and not set(self.commits) <= named
            and (self.reveal_deadline_ms is None or now_ms < self.reveal_deadline_ms)
        ):
            self.published_rr = True
            refs = tuple(CommitRef(n, c.inference_id, c.commit) for n, c in sorted(self.commits.items()))
            self.reveal_requests[self.own_node_id] = [(r.node_id, r.inference_id, r.commit) for r in refs]
            self._named = None
            actions.append(PublishRevealRequest(self.request_id, refs))
            named = self.named()
            if self.first_valid_rr_ms is None:
                self.first_valid_rr_ms = now_ms
        if self.first_valid_rr_ms is None:
            if now_ms >= self.ending_at_ms:
                return actions + self._finish(FAILED_NOT_ENOUGH_COMMITS)
            return actions
        # Our own reveal, once, when a valid request names our commit.
        if self.own is not None and not self.published_reveal and self.own_node_id in named:
            self.published_reveal = True
            actions.append(PublishReveal(self.request_id, self.own.inference_id, self.own.output, self.own.b))
            self.reveals[self.own_node_id] = _Reveal(
                self.own.inference_id,
                self.own.output,
                self.own.b,
                now_ms,
                "accepted",
                None,
                self.own.embedding,
            )
        # Parked reveals whose commit is now named: check the hash, ask for our embedding.
        rd = self.reveal_deadline_ms
        assert rd is not None
        for node_id, rv in sorted(self.reveals.items()):
            if rv.status != "parked" or node_id not in named:
                continue
            c = self.commits[node_id]
            rej = check_opening(
                request_id=self.request_id,
                node_pubkey=_pub(node_id),
                inference_id=rv.inference_id,
                commit=c.commit,
                revealed_b=rv.b,
            )
            if rej is not None:
                actions += self._reject(node_id, rv, rej)
            else:
                rv.status = "pending"
                actions.append(
                    RequestEmbedding(
                        self.request_id, rv.inference_id, rv.output, rd + self.config.consensus_window_ms
                    )
                )
        resolved = all(
            n in self.reveals and self.reveals[n].status in ("accepted", "rejected") for n in named
        )
        pending = any(rv.status == "pending" for rv in self.reveals.values())
        if (
            (resolved and now_ms >= self.commit_deadline_ms and len(named) >= self.params.quorum)
            or (now_ms >= rd and not pending)
            or now_ms >= rd + self.config.consensus_window_ms
        ):
            actions += self._decide()
        return actions

    def _decide_or(self, fallback: str) -> list[Action]:
        if self.first_valid_rr_ms is None:
            if len(self.commits) < self.params.quorum:
                return self._finish(FAILED_NOT_ENOUGH_COMMITS)
            return self._finish(fallback)
        return self._decide()

    def _decide(self) -> list[Action]:
        named = self.named()
        accepted = {
            self.reveals[n].inference_id: np.asarray(self.reveals[n].embedding, dtype=np.float64)
            for n in sorted(named)
            if n in self.reveals and self.reveals[n].status == "accepted"
        }
        outcome: ConsensusOutcome = find_consensus(
            accepted,
            quorum=self.params.quorum,
            sec_distance=self.params.sec_distance,
            sec_percentage=self.params.sec_percentage,
        )
        if not outcome.success:
            return self._finish(f"failed:{outcome.reason}", outcome.members)
        by_iid = {rv.inference_id: (n, rv) for n, rv in self.reveals.items()}
        member_commits = {iid: self.commits[by_iid[iid][0]].commit for iid in outcome.members}
        lengths = {iid: len(by_iid[iid][1].output.split()) for iid in outcome.members}
        rep = pick_representative(self.request_id, member_commits, lengths)
        self.representative = rep
        output = by_iid[rep][1].output
        result = PublishResult(
            self.request_id,
            outcome.members,
            joint_hash(self.request_id, member_commits),
            output,
            rep,
        )
        return [result, *self._finish(SUCCEEDED, outcome.members, output)]

    def _finish(self, state: str, members: tuple[str, ...] = (), output: str | None = None) -> list[Action]:
        self.state = state
        self.outcome_members = tuple(members)
        self.result_output = output
        return [Finished(self.request_id, state, self.outcome_members, output)]

    # ------------------------------------------------------------ reporting

    def reveal_statuses(self) -> dict[str, str]:
        """Per named node: ``accepted``, ``rejected:<reason>``, ``pending`` or ``missing``.

        Feed to ``Reputation.record`` once the machine is final.
        """
        out = {}
        for n in sorted(self.named()):
            rv = self.reveals.get(n)
            if rv is None or rv.status == "parked":
                out[n] = "missing"
            elif rv.status == "rejected":
                out[n] = f"rejected:{rv.reason}"
            else:
                out[n] = rv.status
        return out

    # ------------------------------------------------------------ snapshot

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot (bytes as base64) for persistence across restarts."""
        return {
            "version": 1,
            "request_id": self.request_id,
            "created_at_ms": self.created_at_ms,
            "params": asdict(self.params),
            "own_pubkey": _b64(self.own_pubkey),
            "config": asdict(self.config),
            "seen_at_ms": self.seen_at_ms,
            "state": self.state,
            "commits": {
                n: {"inference_id": c.inference_id, "commit": _b64(c.commit), "at_ms": c.at_ms}
                for n, c in self.commits.items()
            },
            "equivocations": dict(self.equivocations),
            "reveal_requests": {
                s: [[n, i, _b64(c)] for n, i, c in e] for s, e in self.reveal_requests.items()
            },
            "first_valid_rr_ms": self.first_valid_rr_ms,
            "quorum_at_ms": self.quorum_at_ms,
            "reveals": {
                n: {
                    "inference_id": r.inference_id,
                    "output": r.output,
                    "b": _b64(r.b),
                    "at_ms": r.at_ms,
                    "status": r.status,
                    "reason": r.reason,
                    "embedding": r.embedding,
                }
                for n, r in self.reveals.items()
            },
            "own": None
            if self.own is None
            else {
                "inference_id": self.own.inference_id,
                "output": self.own.output,
                "b": _b64(self.own.b),
                "commit": _b64(self.own.commit),
                "embedding": self.own.embedding,
            },
            "published_commit": self.published_commit,
            "published_rr": self.published_rr,
            "published_reveal": self.published_reveal,
            "outcome_members": list(self.outcome_members),
            "result_output": self.result_output,
            "representative": self.representative,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuorumMachine:
        """Inverse of ``to_dict``; raises ValueError on an unknown snapshot version."""
        if d.get("version") != 1:
            raise ValueError(f"unsupported quorum snapshot version {d.get('version')!r}")
        own = d["own"]
        return cls(
            request_id=d["request_id"],
            created_at_ms=d["created_at_ms"],
            params=SecurityParams(**d["params"]),
            own_pubkey=_unb64(d["own_pubkey"]),
            config=QuorumConfig(**d["config"]),
            seen_at_ms=d["seen_at_ms"],
            state=d["state"],
            commits={
                n: _Commit(c["inference_id"], _unb64(c["commit"]), c["at_ms"])
                for n, c in d["commits"].items()
            },
            equivocations=dict(d["equivocations"]),
            reveal_requests={
                s: [(n, i, _unb64(c)) for n, i, c in e] for s, e in d["reveal_requests"].items()
            },
            first_valid_rr_ms=d["first_valid_rr_ms"],
            quorum_at_ms=d["quorum_at_ms"],
            reveals={
                n: _Reveal(
                    r["inference_id"],
                    r["output"],
                    _unb64(r["b"]),
                    r["at_ms"],
                    r["status"],
                    r["reason"],
                    r["embedding"],
                )
                for n, r in d["reveals"].items()
            },
            own=None
            if own is None
            else _Own(
                own["inference_id"], own["output"], _unb64(own["b"]), _unb64(own["commit"]), own["embedding"]
            ),
            published_commit=d["published_commit"],
            published_rr=d["published_rr"],
            published_reveal=d["published_reveal"],
            outcome_members=tuple(d["outcome_members"]),
            result_output=d["result_output"],
            representative=d["representative"],
        )
