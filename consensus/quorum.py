"""Per-request quorum state machine: time-boxed commits -> reveals -> re-check -> result.

The daemon owns the network, the clock, the engines and persistence; this machine owns
the rules. Each event method takes the event's receive time (unix ms) and returns the
actions the daemon must carry out. It never reads a clock itself, so it is
deterministic and replayable.

Phases, all fixed by the signed request (``created_at`` is its signed timestamp)
- Commit window: ``[created_at, commit_close)`` with ``commit_close = created_at +
  commit_window_ms(max_time_ms, frame.commit_window_ms)`` (``consensus.windows``). Our
  own commit is made only inside it. A peer's commit counts when it *arrives* before
  ``reveal_open = commit_close + commit_grace_ms`` (the grace covers gossip
  propagation of a commit made just before the close). Nothing a peer sends closes
  commits earlier: a reveal request or a reveal that arrives during the window is kept
  and changes no deadline, and we never reveal early.
- Reveal phase, from ``reveal_open``: the commit set is frozen (every commit counted),
  we publish our reveal (we reveal even when we counted fewer than ``quorum`` commits:
  commits are closed, so there is nothing to copy, and a peer that counted more can
  still use it) and, after a per-node jitter, a reveal request listing our commit set
  unless one we received already lists all of it. Reveal requests are only *hints*
  (they prompt nodes whose reveals we lack to send them again); they never add
  commits or move deadlines. Then we fail with ``not_enough_commits`` if the commit
  set is smaller than ``quorum``.
- Verification of each reveal of the commit set: the reveal's model and weights hash
  must be its commit's; the hash opening is checked on receipt; then the daemon is
  asked for our own embedding (``RequestEmbedding``, sign bits compared with the
  committed ones) and for a re-check verdict (``RequestRecheck``, once per
  ``recheck_key(model_hash, output)``: identical outputs are checked once). A node
  without the weights answers ``RecheckVerdict.unavailable()``. An output whose
  verdict is ``failed`` is rejected (``failed_recheck``) *before* clustering.
- Decision: as soon as every reveal of the commit set is accepted or rejected, else at
  ``reveal_deadline = reveal_open + reveal_window_ms`` when nothing is pending, at the
  latest at ``hard_stop = reveal_deadline + consensus_window_ms``; a reveal whose
  embedding matched but whose verdict never came counts as ``unavailable`` then.
  Clustering (``find_consensus``) runs on the accepted outputs; the answer is chosen
  among the winning cluster by ``consensus.answer.choose_answer`` (highest
  log-likelihood among re-checked members, else the medoid fallback), a rule that
  depends on the outputs only, never on the commits.

Why this stops the capture of a request by a fast quorum of fake identities: however
fast they commit and whatever they publish, commits stay open until ``commit_close``,
so every honest node that commits inside the window is in every honest node's commit
set (given propagation within ``commit_grace_ms``); their outputs then fail the
re-check (no model run) and are excluded before clustering, or, where nobody can
re-check, have to beat the honest outputs in clustering.

Model identity: every commit and reveal names (model alias, weights hash); one the
request's ``accepted_models`` does not accept is refused (``CommitRefused``, reason
``model_not_accepted`` / ``model_hash_not_accepted``), a reveal whose model differs
from its commit's is rejected (``model_mismatch``).

Other rules: one counted commit per node (the inference id must be derived from the
sender's key; the node's first commit decides: a different second one is counted as
equivocation and ignored, and a refused first commit is not replaced), one reveal per
node, only for counted commits, before ``reveal_deadline``. Final states:
``succeeded``, ``failed:not_enough_commits``, ``failed:not_enough_valid_reveals``,
``failed:no_cluster_of_needed_size``, ``failed:failed_recheck`` (consensus failed and
the re-check removed outputs without which there would have been ``quorum`` valid
reveals) and ``expired`` (first seen at or after ``reveal_open``: too late to count
any commit). Events after a final state change nothing.

Restart: ``to_dict()`` / ``QuorumMachine.from_dict()`` give a JSON-safe snapshot,
including which actions were already emitted, so a restored machine does not publish
twice. Replaying the persisted events in order into a fresh machine gives the same
state too (the daemon should drop replayed ``Publish*`` actions it already sent).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from consensus.answer import Candidate, choose_answer
from consensus.clustering import ConsensusOutcome, find_consensus, joint_hash
from consensus.commitments import binary_embedding, hamming, inference_id_for, make_commit
from consensus.models import AcceptedModels
from consensus.recheck import RecheckVerdict, recheck_key, recheck_summary
from consensus.reputation import FAILED_RECHECK
from consensus.verification import (
    DEFAULT_HAMMING_TOLERANCE,
    Rejection,
    RejectReason,
    check_opening,
)
from consensus.windows import commit_window_ms

__all__ = [
    "Action",
    "CommitRef",
    "CommitRefused",
    "Finished",
    "PublishCommit",
    "PublishRejection",
    "PublishResult",
    "PublishReveal",
    "PublishRevealRequest",
    "QuorumConfig",
    "QuorumMachine",
    "RequestEmbedding",
    "RequestRecheck",
    "SecurityParams",
]

SUCCEEDED = "succeeded"
EXPIRED = "expired"
FAILED_NOT_ENOUGH_COMMITS = "failed:not_enough_commits"
FAILED_RECHECK_STATE = f"failed:{FAILED_RECHECK}"
SNAPSHOT_VERSION = 2


@dataclass(frozen=True, slots=True)
class QuorumConfig:
    """Windows and tolerances the daemon fills from its settings (all ms).

    ``commit_grace_ms``: how long after the commit window closes a peer's commit still
    counts on arrival (gossip propagation); reveals start only after it.
    ``reveal_request_grace_ms``: base of the per-node jitter before we publish our
    (hint) reveal request once reveals open.
    """

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
    """The parts of the signed request consensus enforces.

    ``accepted_models``: the request's list as on the wire (``alias`` or
    ``alias@sha256:<hex>``, see ``consensus.models``). ``commit_window_ms``: the
    security frame's value, None when absent (then the default applies).
    """

    quorum: int
    max_time_ms: int
    sec_distance: float
    sec_percentage: float
    accepted_models: tuple[str, ...]
    commit_window_ms: int | None = None

    def __post_init__(self) -> None:
        if self.quorum < 1 or self.max_time_ms <= 0:
            raise ValueError("quorum must be >= 1 and max_time_ms > 0")
        if not 0.0 <= self.sec_distance <= 2.0 or not 0.0 < self.sec_percentage <= 1.0:
            raise ValueError("sec_distance must be in [0, 2] and sec_percentage in (0, 1]")
        if isinstance(self.accepted_models, str) or not isinstance(self.accepted_models, tuple | list):
            raise ValueError("accepted_models must be a sequence of model references")
        object.__setattr__(self, "accepted_models", tuple(self.accepted_models))
        AcceptedModels.parse(self.accepted_models)
        commit_window_ms(self.max_time_ms, self.commit_window_ms)

    @property
    def commit_window(self) -> int:
        """The effective commit window in ms (explicit or default)."""
        return commit_window_ms(self.max_time_ms, self.commit_window_ms)

    def models(self) -> AcceptedModels:
        return AcceptedModels.parse(self.accepted_models)


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
    model: str
    model_hash: str


@dataclass(frozen=True, slots=True)
class PublishRevealRequest:
    """A hint listing our commit set (see module docstring); never an authority."""

    request_id: str
    commits: tuple[CommitRef, ...]


@dataclass(frozen=True, slots=True)
class PublishReveal:
    request_id: str
    inference_id: str
    output: str
    b: bytes
    model: str
    model_hash: str
    output_tokens: tuple[int, ...] | None = None  # the token ids our sampler drew


@dataclass(frozen=True, slots=True)
class RequestEmbedding:
    """Embed ``output`` (verification priority) and call ``embedding_ready``."""

    request_id: str
    inference_id: str
    output: str
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class RequestRecheck:
    """Re-check ``output`` against the weights ``model_hash`` (teacher-forced, with the
    request's prompt, seed and sampling parameters) and call ``recheck_ready(key,
    verdict)``; feed ``RecheckVerdict.unavailable()`` when this node lacks the weights."""

    request_id: str
    key: str
    output: str
    model: str
    model_hash: str
    deadline_ms: int
    output_tokens: tuple[int, ...] | None = None  # the revealer's token ids (None: text only)


@dataclass(frozen=True, slots=True)
class CommitRefused:
    """A commit the machine did not count because of its model; nothing to publish:
    log it and charge the sender (it counts as ``rejected:<reason>`` in
    ``reveal_statuses``)."""

    request_id: str
    node_id: str
    inference_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class PublishRejection:
    request_id: str
    inference_id: str
    node_id: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The verifier's result (``inference_quorum_computed``).

    ``answer_rule``: ``max_log_likelihood`` or ``medoid`` (``consensus.answer``);
    ``recheck``: ``checked``, ``partial`` or ``unavailable`` (``recheck_summary``)."""

    request_id: str
    valid_inferences: tuple[str, ...]
    joint_hash: str
    output: str
    representative: str
    answer_rule: str
    recheck: str


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
    | RequestRecheck
    | CommitRefused
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
    model: str
    model_hash: str


@dataclass(slots=True)
class _Reveal:
    inference_id: str
    output: str
    b: bytes
    at_ms: int
    model: str
    model_hash: str
    status: str = "parked"  # parked (reveals not open yet) | pending | accepted | rejected
    reason: str | None = None
    embedding: list[float] | None = None  # our own, once its sign bits matched
    output_tokens: list[int] | None = None  # the token ids the revealer's sampler drew

    @property
    def key(self) -> str:
        return recheck_key(self.model_hash, self.output, self.output_tokens)


@dataclass(slots=True)
class _Own:
    inference_id: str
    output: str
    b: bytes
    commit: bytes
    embedding: list[float]
    model: str
    model_hash: str
    output_tokens: list[int] | None = None


def _tokens(rv: _Reveal) -> tuple[int, ...] | None:
    return None if rv.output_tokens is None else tuple(rv.output_tokens)


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
    refused_commits: dict[str, str] = field(default_factory=dict)
    equivocations: dict[str, int] = field(default_factory=dict)
    reveal_requests: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)
    reveals: dict[str, _Reveal] = field(default_factory=dict)
    verdicts: dict[str, RecheckVerdict] = field(default_factory=dict)
    rechecks_requested: set[str] = field(default_factory=set)
    own: _Own | None = None
    reveal_started_ms: int | None = None
    published_commit: bool = False
    published_rr: bool = False
    published_reveal: bool = False
    outcome_members: tuple[str, ...] = ()
    result_output: str | None = None
    representative: str | None = None
    answer_rule: str | None = None
    recheck_status: str | None = None
    _models: AcceptedModels | None = field(default=None, repr=False, compare=False)

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
        """Event *request seen*: a new machine, already ``expired`` when first seen at or
        after ``reveal_open_ms`` (too late to count any commit)."""
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
        if now_ms >= m.reveal_open_ms:
            return m, m._finish(EXPIRED)
        return m, []

    # ------------------------------------------------------------ derived times

    @property
    def models(self) -> AcceptedModels:
        if self._models is None:
            self._models = self.params.models()
        return self._models

    @property
    def ending_at_ms(self) -> int:
        """The client's deadline for the whole request (``created_at + max_time_ms``)."""
        return self.created_at_ms + self.params.max_time_ms

    @property
    def commit_close_ms(self) -> int:
        """Our own commit must be made before this (also the local inference deadline)."""
        return self.created_at_ms + self.params.commit_window

    @property
    def reveal_open_ms(self) -> int:
        """Peers' commits count when they arrive before this; reveals start at it."""
        return self.commit_close_ms + self.config.commit_grace_ms

    @property
    def reveal_deadline_ms(self) -> int:
        return self.reveal_open_ms + self.config.reveal_window_ms

    @property
    def hard_stop_ms(self) -> int:
        return self.reveal_deadline_ms + self.config.consensus_window_ms

    @property
    def own_node_id(self) -> str:
        return self.own_pubkey.hex()

    @property
    def final(self) -> bool:
        return self.state in (SUCCEEDED, EXPIRED) or self.state.startswith("failed:")

    @property
    def revealing(self) -> bool:
        """Whether the reveal phase has started (the commit set is frozen)."""
        return self.reveal_started_ms is not None

    def commit_set(self) -> frozenset[str]:
        """Node ids whose commits we counted; frozen once the reveal phase starts."""
        return frozenset(self.commits)

    def next_wakeup_ms(self) -> int | None:
        """When the daemon should next call ``tick`` (None once final)."""
        if self.final:
            return None
        if not self.revealing:
            return self.reveal_open_ms
        times = [self.reveal_deadline_ms, self.hard_stop_ms]
        if not self.published_rr:
            times.append(self.reveal_open_ms + self._rr_delay_ms())
        return min(times)

    # ------------------------------------------------------------ events

    def own_inference_done(
        self,
        output: str,
        embedding: np.ndarray,
        now_ms: int,
        *,
        model: str,
        model_hash: str,
        output_tokens: list[int] | None = None,
    ) -> list[Action]:
        """Event: our own inference and its embedding are ready; commit if still in time.

        Raises ValueError when (model, model_hash) is not accepted by the request: the
        daemon must only run accepted models (``models.accepts``)."""
        if self.final or self.own is not None:
            return []
        refusal = self.models.refusal(model, model_hash)
        if refusal is not None:
            raise ValueError(f"own model refused: {refusal[0]}: {refusal[1]}")
        if now_ms >= self.commit_close_ms:
            return self.tick(now_ms)
        b = binary_embedding(embedding)
        iid = inference_id_for(self.request_id, self.own_pubkey)
        commit = make_commit(b, self.own_pubkey, iid)
        emb = [float(x) for x in np.asarray(embedding, dtype=np.float64)]
        tokens = None if output_tokens is None else [int(t) for t in output_tokens]
        self.own = _Own(iid, output, b, commit, emb, model, model_hash, tokens)
        self.published_commit = True
        actions: list[Action] = [PublishCommit(self.request_id, iid, commit, model, model_hash)]
        actions += self.commit_seen(self.own_pubkey, iid, commit, now_ms, model=model, model_hash=model_hash)
        return actions

    def commit_seen(
        self,
        node_pubkey: bytes,
        inference_id: str,
        commit: bytes,
        now_ms: int,
        *,
        model: str,
        model_hash: str,
    ) -> list[Action]:
        """Event: a signed commit packet from ``node_pubkey`` (signature already checked)."""
        if self.final:
            return []
        actions = self.tick(now_ms)
        if self.final or self.revealing or now_ms >= self.reveal_open_ms:
            return actions
        if len(node_pubkey) != 32 or not isinstance(commit, bytes | bytearray) or len(commit) != 32:
            return actions
        if inference_id != inference_id_for(self.request_id, node_pubkey):
            return actions
        node_id = bytes(node_pubkey).hex()
        if node_id in self.refused_commits:
            return actions
        prev = self.commits.get(node_id)
        if prev is not None:
            if prev.commit != bytes(commit) or prev.model != model or prev.model_hash != model_hash:
                self.equivocations[node_id] = self.equivocations.get(node_id, 0) + 1
            return actions
        refusal = self.models.refusal(str(model), str(model_hash))
        if refusal is not None:
            self.refused_commits[node_id] = refusal[0]
            return [*actions, CommitRefused(self.request_id, node_id, inference_id, refusal[0], refusal[1])]
        if len(self.commits) >= self.config.max_commits:
            return actions
        self.commits[node_id] = _Commit(inference_id, bytes(commit), now_ms, str(model), str(model_hash))
        return actions

    def reveal_request_seen(
        self, sender_pubkey: bytes, commits: Sequence[CommitRef], now_ms: int
    ) -> list[Action]:
        """Event: a reveal request; a hint only (kept, first one per sender, for views
        and to skip publishing our own). It never closes commits or makes us reveal."""
        if self.final:
            return []
        actions = self.tick(now_ms)
        if self.final or now_ms >= self.reveal_deadline_ms:
            return actions
        sender = bytes(sender_pubkey).hex()
        if sender in self.reveal_requests or len(self.reveal_requests) >= self.config.max_commits:
            return actions
        self.reveal_requests[sender] = [
            (str(r.node_id).lower(), str(r.inference_id), bytes(r.commit))
            for r in commits[: self.config.max_commits]
        ]
        return actions + self._progress(now_ms)

    def reveal_seen(
        self,
        node_pubkey: bytes,
        inference_id: str,
        output: str,
        b: bytes,
        now_ms: int,
        *,
        model: str,
        model_hash: str,
        output_tokens: list[int] | None = None,
    ) -> list[Action]:
        """Event: a signed reveal; one per counted committer, before the reveal deadline.
        One that arrives before the reveal phase is kept (parked) and checked then."""
        if self.final:
            return []
        actions = self.tick(now_ms)
        if self.final or now_ms >= self.reveal_deadline_ms:
            return actions
        node_id = bytes(node_pubkey).hex()
        if node_id in self.reveals or node_id not in self.commits:
            return actions
        if not isinstance(output, str) or not isinstance(b, bytes | bytearray):
            return actions
        tokens = None if output_tokens is None else [int(t) for t in output_tokens]
        self.reveals[node_id] = _Reveal(
            inference_id, output, bytes(b), now_ms, str(model), str(model_hash), output_tokens=tokens
        )
        return actions + self._progress(now_ms)

    def embedding_ready(self, inference_id: str, embedding: np.ndarray, now_ms: int) -> list[Action]:
        """Event: our own embedding of a revealed output (asked by ``RequestEmbedding``)."""
        if self.final:
            return []
        actions: list[Action] = []
        for node_id, rv in sorted(self.reveals.items()):
            if rv.inference_id != inference_id or rv.status != "pending" or rv.embedding is not None:
                continue
            own_b = binary_embedding(embedding)
            if len(own_b) != len(rv.b):
                actions += self._reject(
                    node_id, rv, Rejection(inference_id, RejectReason.bad_binary_embedding, "length differs")
                )
                continue
            d = hamming(own_b, rv.b)
            if d > self.config.hamming_tolerance:
                rej = Rejection(
                    inference_id,
                    RejectReason.embedding_mismatch,
                    f"{d} bits differ (tolerance {self.config.hamming_tolerance})",
                    d,
                )
                actions += self._reject(node_id, rv, rej)
                continue
            rv.embedding = [float(x) for x in np.asarray(embedding, dtype=np.float64)]
            actions += self._settle(node_id, rv)
        return actions + self.tick(now_ms)

    def recheck_ready(self, key: str, verdict: RecheckVerdict, now_ms: int) -> list[Action]:
        """Event: the re-check verdict for ``key`` (asked by ``RequestRecheck``). The first
        verdict per key counts; one for a key never asked for is ignored."""
        if self.final:
            return []
        if not isinstance(verdict, RecheckVerdict):
            raise TypeError(f"verdict must be a RecheckVerdict, got {type(verdict).__name__}")
        if key not in self.rechecks_requested or key in self.verdicts:
            return self.tick(now_ms)
        self.verdicts[key] = verdict
        actions: list[Action] = []
        for node_id, rv in sorted(self.reveals.items()):
            if rv.status == "pending" and rv.key == key:
                actions += self._settle(node_id, rv)
        return actions + self.tick(now_ms)

    def tick(self, now_ms: int) -> list[Action]:
        """Event: time passed (deadlines)."""
        if self.final:
            return []
        return self._progress(now_ms)

    # ------------------------------------------------------------ internals

    def _rr_delay_ms(self) -> int:
        """Grace plus a per-node deterministic jitter in [0, grace], so that usually one
        node publishes the reveal request and the others see it and stay quiet."""
        grace = self.config.reveal_request_grace_ms
        h = hashlib.sha256(self.request_id.encode("ascii") + self.own_pubkey).digest()
        return grace + int.from_bytes(h[:4], "big") % (grace + 1)

    def _covered_by_received_rr(self) -> bool:
        """Whether a reveal request we received lists every commit we counted."""
        mine = {(n, c.inference_id, c.commit) for n, c in self.commits.items()}
        return any(
            mine <= set(entries) for s, entries in self.reveal_requests.items() if s != self.own_node_id
        )

    def _reject(self, node_id: str, rv: _Reveal, rej: Rejection | tuple[str, str]) -> list[Action]:
        reason, detail = (str(rej.reason), rej.detail) if isinstance(rej, Rejection) else rej
        rv.status = "rejected"
        rv.reason = reason
        return [PublishRejection(self.request_id, rv.inference_id, node_id, reason, detail)]

    def _settle(self, node_id: str, rv: _Reveal) -> list[Action]:
        """A pending reveal becomes rejected (failed re-check) or accepted (sign bits
        matched and a verdict that does not exclude it)."""
        if rv.status != "pending":
            return []
        verdict = self.verdicts.get(rv.key)
        if verdict is not None and verdict.excludes:
            return self._reject(node_id, rv, (FAILED_RECHECK, str(verdict.reason)))
        if verdict is not None and rv.embedding is not None:
            rv.status = "accepted"
        return []

    def _open_reveals(self, now_ms: int) -> list[Action]:
        """The reveal phase starts: freeze the commit set, reveal our own output."""
        self.reveal_started_ms = now_ms
        actions: list[Action] = []
        own = self.own
        if own is not None and not self.published_reveal and self.own_node_id in self.commits:
            self.published_reveal = True
            actions.append(
                PublishReveal(
                    self.request_id,
                    own.inference_id,
                    own.output,
                    own.b,
                    own.model,
                    own.model_hash,
                    None if own.output_tokens is None else tuple(own.output_tokens),
                )
            )
            self.reveals[self.own_node_id] = _Reveal(
                own.inference_id,
                own.output,
                own.b,
                now_ms,
                own.model,
                own.model_hash,
                "parked",
                output_tokens=own.output_tokens,
            )
        return actions

    def _check_parked(self) -> list[Action]:
        """Parked reveals of the commit set: model, hash opening; then ask for our
        embedding and (once per key) the re-check verdict."""
        actions: list[Action] = []
        deadline = self.hard_stop_ms
        for node_id, rv in sorted(self.reveals.items()):
            if rv.status != "parked":
                continue
            c = self.commits[node_id]
            if (rv.model, rv.model_hash) != (c.model, c.model_hash):
                actions += self._reject(
                    node_id, rv, ("model_mismatch", f"revealed {rv.model!r:.80}, committed {c.model!r:.80}")
                )
                continue
            rej = check_opening(
                request_id=self.request_id,
                node_pubkey=_pub(node_id),
                inference_id=rv.inference_id,
                commit=c.commit,
                revealed_b=rv.b,
            )
            if rej is not None:
                actions += self._reject(node_id, rv, rej)
                continue
            rv.status = "pending"
            if node_id == self.own_node_id and self.own is not None and rv.output == self.own.output:
                rv.embedding = list(self.own.embedding)  # ours: no need to embed it again
            else:
                actions.append(RequestEmbedding(self.request_id, rv.inference_id, rv.output, deadline))
            key = rv.key
            if key not in self.rechecks_requested:
                self.rechecks_requested.add(key)
                actions.append(
                    RequestRecheck(
                        self.request_id, key, rv.output, rv.model, rv.model_hash, deadline, _tokens(rv)
                    )
                )
            actions += self._settle(node_id, rv)
        return actions

    def _progress(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        if not self.revealing:
            if now_ms < self.reveal_open_ms:
                return actions
            actions += self._open_reveals(now_ms)
            if len(self.commits) < self.params.quorum:
                return actions + self._finish(FAILED_NOT_ENOUGH_COMMITS)
        if now_ms >= self.hard_stop_ms:
            return actions + self._decide(now_ms)
        if (
            not self.published_rr
            and now_ms >= self.reveal_open_ms + self._rr_delay_ms()
            and now_ms < self.reveal_deadline_ms
        ):
            self.published_rr = True
            if not self._covered_by_received_rr():
                refs = tuple(CommitRef(n, c.inference_id, c.commit) for n, c in sorted(self.commits.items()))
                self.reveal_requests[self.own_node_id] = [(r.node_id, r.inference_id, r.commit) for r in refs]
                actions.append(PublishRevealRequest(self.request_id, refs))
        actions += self._check_parked()
        resolved = all(
            n in self.reveals and self.reveals[n].status in ("accepted", "rejected") for n in self.commits
        )
        pending = any(rv.status == "pending" for rv in self.reveals.values())
        if resolved or (now_ms >= self.reveal_deadline_ms and not pending):
            actions += self._decide(now_ms)
        return actions

    def _decide(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        # At the hard stop: a reveal whose sign bits matched but whose verdict never came
        # is judged like one nobody can re-check.
        for node_id, rv in sorted(self.reveals.items()):
            if rv.status == "pending" and rv.embedding is not None and rv.key not in self.verdicts:
                self.verdicts[rv.key] = RecheckVerdict.unavailable("no verdict by the deadline")
                actions += self._settle(node_id, rv)
        accepted = {n: rv for n, rv in sorted(self.reveals.items()) if rv.status == "accepted"}
        failed = [rv for rv in self.reveals.values() if rv.reason == FAILED_RECHECK]
        self.recheck_status = recheck_summary(
            [self.verdicts[rv.key] for rv in (*accepted.values(), *failed) if rv.key in self.verdicts]
        )
        outcome: ConsensusOutcome = find_consensus(
            {rv.inference_id: np.asarray(rv.embedding, dtype=np.float64) for rv in accepted.values()},
            quorum=self.params.quorum,
            sec_distance=self.params.sec_distance,
            sec_percentage=self.params.sec_percentage,
        )
        if not outcome.success:
            reason = str(outcome.reason)
            if failed and len(accepted) + len(failed) >= self.params.quorum:
                reason = FAILED_RECHECK
            return actions + self._finish(f"failed:{reason}", outcome.members)
        by_iid = {rv.inference_id: (n, rv) for n, rv in accepted.items()}
        members = [by_iid[iid] for iid in outcome.members]
        choice = choose_answer(
            [
                Candidate(rv.inference_id, n, rv.output, self.verdicts[rv.key], np.asarray(rv.embedding))
                for n, rv in members
            ]
        )
        self.representative = choice.inference_id
        self.answer_rule = choice.rule
        output = by_iid[choice.inference_id][1].output
        member_commits = {rv.inference_id: self.commits[n].commit for n, rv in members}
        result = PublishResult(
            self.request_id,
            outcome.members,
            joint_hash(self.request_id, member_commits),
            output,
            choice.inference_id,
            choice.rule,
            self.recheck_status,
        )
        return [*actions, result, *self._finish(SUCCEEDED, outcome.members, output)]

    def _finish(self, state: str, members: tuple[str, ...] = (), output: str | None = None) -> list[Action]:
        self.state = state
        self.outcome_members = tuple(members)
        self.result_output = output
        return [Finished(self.request_id, state, self.outcome_members, output)]

    # ------------------------------------------------------------ reporting

    def reveal_statuses(self) -> dict[str, str]:
        """Per committing node: ``accepted``, ``rejected:<reason>`` (``failed_recheck``,
        ``model_not_accepted`` for a refused commit, ...), ``pending`` or ``missing``.

        Feed to ``Reputation.record`` once the machine is final.
        """
        out = {n: f"rejected:{reason}" for n, reason in self.refused_commits.items()}
        for n in sorted(self.commits):
            rv = self.reveals.get(n)
            if rv is None or rv.status == "parked":
                out[n] = "missing"
            elif rv.status == "rejected":
                out[n] = f"rejected:{rv.reason}"
            else:
                out[n] = rv.status
        return dict(sorted(out.items()))

    def verdict_of(self, node_id: str) -> RecheckVerdict | None:
        """The re-check verdict of ``node_id``'s revealed output, if one was given."""
        rv = self.reveals.get(node_id)
        return None if rv is None else self.verdicts.get(rv.key)

    def pending_work(self) -> list[Action]:
        """The embeddings and re-checks asked for and not answered yet: what a daemon
        restarted from a snapshot must start again (each ``RequestEmbedding`` once per
        pending reveal, each ``RequestRecheck`` once per key)."""
        if self.final:
            return []
        work: list[Action] = []
        asked: set[str] = set()
        for _node_id, rv in sorted(self.reveals.items()):
            if rv.status != "pending":
                continue
            if rv.embedding is None:
                work.append(RequestEmbedding(self.request_id, rv.inference_id, rv.output, self.hard_stop_ms))
            key = rv.key
            if key in self.rechecks_requested and key not in self.verdicts and key not in asked:
                asked.add(key)
                work.append(
                    RequestRecheck(
                        self.request_id, key, rv.output, rv.model, rv.model_hash, self.hard_stop_ms, _tokens(rv)
                    )
                )
        return work

    def reveal_verdicts(self) -> dict[str, RecheckVerdict]:
        """inference id -> verdict, for every revealed output that has one (views and
        certificates: members and the outputs excluded by a failed re-check)."""
        return {
            rv.inference_id: self.verdicts[rv.key] for rv in self.reveals.values() if rv.key in self.verdicts
        }

    # ------------------------------------------------------------ snapshot

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe snapshot (bytes as base64) for persistence across restarts."""
        return {
            "version": SNAPSHOT_VERSION,
            "request_id": self.request_id,
            "created_at_ms": self.created_at_ms,
            "params": {**asdict(self.params), "accepted_models": list(self.params.accepted_models)},
            "own_pubkey": _b64(self.own_pubkey),
            "config": asdict(self.config),
            "seen_at_ms": self.seen_at_ms,
            "state": self.state,
            "commits": {
                n: {
                    "inference_id": c.inference_id,
                    "commit": _b64(c.commit),
                    "at_ms": c.at_ms,
                    "model": c.model,
                    "model_hash": c.model_hash,
                }
                for n, c in self.commits.items()
            },
            "refused_commits": dict(self.refused_commits),
            "equivocations": dict(self.equivocations),
            "reveal_requests": {
                s: [[n, i, _b64(c)] for n, i, c in e] for s, e in self.reveal_requests.items()
            },
            "reveals": {
                n: {
                    "inference_id": r.inference_id,
                    "output": r.output,
                    "b": _b64(r.b),
                    "at_ms": r.at_ms,
                    "model": r.model,
                    "model_hash": r.model_hash,
                    "status": r.status,
                    "reason": r.reason,
                    "embedding": r.embedding,
                    "output_tokens": r.output_tokens,
                }
                for n, r in self.reveals.items()
            },
            "verdicts": {k: v.to_dict() for k, v in self.verdicts.items()},
            "rechecks_requested": sorted(self.rechecks_requested),
            "own": None
            if self.own is None
            else {
                "inference_id": self.own.inference_id,
                "output": self.own.output,
                "b": _b64(self.own.b),
                "commit": _b64(self.own.commit),
                "embedding": self.own.embedding,
                "model": self.own.model,
                "model_hash": self.own.model_hash,
                "output_tokens": self.own.output_tokens,
            },
            "reveal_started_ms": self.reveal_started_ms,
            "published_commit": self.published_commit,
            "published_rr": self.published_rr,
            "published_reveal": self.published_reveal,
            "outcome_members": list(self.outcome_members),
            "result_output": self.result_output,
            "representative": self.representative,
            "answer_rule": self.answer_rule,
            "recheck_status": self.recheck_status,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuorumMachine:
        """Inverse of ``to_dict``; raises ValueError on an unknown snapshot version
        (version 1 snapshots come from protocol-1 nodes: their requests cannot finish
        under protocol 2 and are not restored)."""
        if d.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported quorum snapshot version {d.get('version')!r}")
        own = d["own"]
        p = dict(d["params"])
        p["accepted_models"] = tuple(p["accepted_models"])
        return cls(
            request_id=d["request_id"],
            created_at_ms=d["created_at_ms"],
            params=SecurityParams(**p),
            own_pubkey=_unb64(d["own_pubkey"]),
            config=QuorumConfig(**d["config"]),
            seen_at_ms=d["seen_at_ms"],
            state=d["state"],
            commits={
                n: _Commit(c["inference_id"], _unb64(c["commit"]), c["at_ms"], c["model"], c["model_hash"])
                for n, c in d["commits"].items()
            },
            refused_commits=dict(d["refused_commits"]),
            equivocations=dict(d["equivocations"]),
            reveal_requests={
                s: [(n, i, _unb64(c)) for n, i, c in e] for s, e in d["reveal_requests"].items()
            },
            reveals={
                n: _Reveal(
                    r["inference_id"],
                    r["output"],
                    _unb64(r["b"]),
                    r["at_ms"],
                    r["model"],
                    r["model_hash"],
                    r["status"],
                    r["reason"],
                    r["embedding"],
                    r.get("output_tokens"),
                )
                for n, r in d["reveals"].items()
            },
            verdicts={k: RecheckVerdict.from_dict(v) for k, v in d["verdicts"].items()},
            rechecks_requested=set(d["rechecks_requested"]),
            own=None
            if own is None
            else _Own(
                own["inference_id"],
                own["output"],
                _unb64(own["b"]),
                _unb64(own["commit"]),
                own["embedding"],
                own["model"],
                own["model_hash"],
                own.get("output_tokens"),
            ),
            reveal_started_ms=d["reveal_started_ms"],
            published_commit=d["published_commit"],
            published_rr=d["published_rr"],
            published_reveal=d["published_reveal"],
            outcome_members=tuple(d["outcome_members"]),
            result_output=d["result_output"],
            representative=d["representative"],
            answer_rule=d["answer_rule"],
            recheck_status=d["recheck_status"],
        )
