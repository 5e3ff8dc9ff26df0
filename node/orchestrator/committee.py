"""Committee sortition for the orchestrator: who runs a request, whose commits count.

Why: without it every node holding an accepted model runs every request, so N nodes
do N times the work of one (issue 20). The rules are pure and live in
``consensus.sortition`` (tickets, weights, water-filled threshold, nested widening
rounds, the verifier's slack rule) and ``consensus.standing``; this module only builds
each request's ``CommitteeView`` from what the node knows (the gossip peer table's
``peer_info`` capacity and first sighting, the store's reputation counts) and keeps
the per-request state: the first round, the committee commits counted, the commits
ignored, and the round in which this node selected itself.

Rounds are timed from the request's own ``ts`` with ``round_ms = commit window /
rounds_per_window`` (at least ``min_round_ms``), so every node agrees on them and a
widened member still has time to commit before the window closes. With few peers
(expected committee >= eligible nodes) everyone is selected: a lone node or a 3-node
testnet behaves as before.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from consensus import sortition as so
from consensus.models import AcceptedModels
from consensus.standing import StandingConfig, standing
from node import metrics, wire
from node.logs import get_logger

log = get_logger(__name__)

__all__ = ["Committees", "RequestCommittee"]


@dataclass
class RequestCommittee:
    """One request's committee as this node sees it."""

    request_id: str
    view: so.CommitteeView
    config: so.SortitionConfig
    quorum: int
    created_ms: int
    first: int
    standings: dict[str, float]
    capacities: dict[str, int]
    members: set[str] = field(default_factory=set)  # committee members whose commit counted
    ignored: Counter[str] = field(default_factory=Counter)  # by reason
    own_round: int | None = None  # the round in which this node selected itself

    def current_round(self, now_ms: int) -> int:
        """The latest open round: ``first`` plus one per ``round_ms`` elapsed, but later
        rounds open only while fewer than ``quorum`` committee commits have come."""
        elapsed = max(0, now_ms - self.created_ms) // self.config.round_ms
        if len(self.members) >= self.quorum:
            return self.first
        return min(self.config.max_rounds, self.first + int(elapsed))

    def as_dict(self) -> dict[str, Any]:
        return {
            "eligible": len(self.view.weights),
            "target": self.view.target,
            "first_round": self.first,
            "round_ms": self.config.round_ms,
            "committee": self.view.members(self.request_id, self.first),
            "own_round": self.own_round,
            "counted": sorted(self.members),
            "ignored_commits": sum(self.ignored.values()),
            "ignored_by_reason": dict(self.ignored),
        }


class Committees:
    """Per-request sortition state for one node (built by the daemon).

    ``peers()`` returns the gossip peer table's records (``node.p2p.peers.PeerRecord``:
    ``node_id``, ``models``, ``workers``, ``first_seen_ms``); ``own_workers()`` this
    node's ready workers per model; ``reputation()`` the store's counts per node id.
    """

    def __init__(
        self,
        *,
        node_id: str,
        peers: Callable[[], Iterable[Any]],
        own_workers: Callable[[], Mapping[str, int]],
        reputation: Callable[[], Mapping[str, Mapping[str, int]]],
        enabled: bool = True,
        committee_factor: float = 1.5,
        slack: float = 1.5,
        rounds_per_window: int = 3,
        min_round_ms: int = 1_000,
        standing_config: StandingConfig = StandingConfig(),
        started_ms: int = 0,
        keep_finished: int = 1_000,
    ) -> None:
        if rounds_per_window < 1 or min_round_ms < 1:
            raise ValueError("rounds_per_window and min_round_ms must be >= 1")
        self.node_id = node_id
        self.enabled = enabled
        self._peers = peers
        self._own_workers = own_workers
        self._reputation = reputation
        self.factor = so.SortitionConfig(committee_factor=committee_factor).committee_factor
        self.slack = so.SortitionConfig(slack=slack).slack
        self.rounds_per_window = rounds_per_window
        self.min_round_ms = min_round_ms
        self.standing_config = standing_config
        self.started_ms = started_ms
        self._live: dict[str, RequestCommittee] = {}
        self._done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._keep = keep_finished
        self.counts: Counter[str] = Counter()  # selected | not_selected | widened | ignored_commits

    # ------------------------------------------------------------------ building
    def open(
        self, request_id: str, body: wire.InferenceRequest, created_ms: int, now_ms: int
    ) -> RequestCommittee | None:
        """Build the request's view and first round (idempotent); None when sortition is off."""
        if not self.enabled:
            return None
        rc = self._live.get(request_id)
        if rc is not None:
            return rc
        accepted = set(AcceptedModels.parse(body.accepted_models).aliases)
        window = body.security_frame.effective_commit_window_ms
        cfg = so.SortitionConfig(
            committee_factor=self.factor,
            slack=self.slack,
            round_ms=max(self.min_round_ms, window // self.rounds_per_window),
        )
        rep = self._reputation()
        weights: dict[str, float] = {}
        standings: dict[str, float] = {}
        capacities: dict[str, int] = {}
        for rec in self._peers():
            cap = sum(int(n) for m, n in (rec.workers or {}).items() if m in accepted)
            if rec.node_id == self.node_id or cap <= 0 or not set(rec.models or ()) & accepted:
                continue
            age_s = max(0.0, (now_ms - int(rec.first_seen_ms or now_ms)) / 1000)
            weights[rec.node_id], standings[rec.node_id] = self._weight(rec.node_id, cap, age_s, rep, cfg)
            capacities[rec.node_id] = cap
        own_cap = sum(int(n) for m, n in self._own_workers().items() if m in accepted)
        if own_cap > 0:
            age_s = max(0.0, (now_ms - self.started_ms) / 1000)
            weights[self.node_id], standings[self.node_id] = self._weight(
                self.node_id, own_cap, age_s, rep, cfg
            )
            capacities[self.node_id] = own_cap
        quorum = body.security_frame.quorum
        view = so.CommitteeView(weights, so.committee_target(quorum, cfg), cfg)
        rc = RequestCommittee(
            request_id=request_id,
            view=view,
            config=cfg,
            quorum=quorum,
            created_ms=created_ms,
            first=so.first_round(view, request_id, quorum),
            standings=standings,
            capacities=capacities,
        )
        self._live[request_id] = rc
        return rc

    def _weight(
        self,
        node_id: str,
        cap: int,
        age_s: float,
        rep: Mapping[str, Mapping[str, int]],
        cfg: so.SortitionConfig,
    ) -> tuple[float, float]:
        counts = rep.get(node_id, {})
        st = standing(
            age_s, int(counts.get("accepted", 0)), int(counts.get("failed_recheck", 0)), self.standing_config
        )
        return so.weight(cap, st, cfg), st

    # ------------------------------------------------------------------ our own work
    def own_round(self, request_id: str, now_ms: int) -> int | None:
        """The round in which this node runs the request, or None (not selected yet).

        Without a plan (sortition off, or the request opened before it was on) every
        node runs it: round 0."""
        rc = self._live.get(request_id)
        if rc is None:
            return 0
        if rc.own_round is not None:
            return rc.own_round
        if self.node_id not in rc.view.weights:
            return None
        current = rc.current_round(now_ms)
        for r in range(rc.first, current + 1):
            if rc.view.selected(request_id, self.node_id, r):
                rc.own_round = r
                outcome = "selected" if r == rc.first else "widened"
                self.counts[outcome] += 1
                metrics.COMMITTEE_DECISIONS.labels(outcome=outcome).inc()
                log.info("committee_selected", request_id=request_id, round=r, first_round=rc.first)
                return r
        return None

    def commit_fields(self, request_id: str) -> dict[str, int]:
        """``sortition_round`` / ``capacity`` for our commit (the ticket inputs)."""
        rc = self._live.get(request_id)
        if rc is None:
            return {}
        self_cap = rc.capacities.get(self.node_id, 1)
        rc.members.add(self.node_id)
        return {"sortition_round": rc.own_round or 0, "capacity": int(self_cap)}

    # ------------------------------------------------------------------ verifiers
    def admit(
        self, request_id: str, sender: bytes, body: wire.InferenceCommit, now_ms: int
    ) -> so.CommitVerdict | None:
        """Count this commit only if its sender is in the committee (``check_commit``,
        with the slack rule). None: no plan for the request, so no check."""
        rc = self._live.get(request_id)
        if rc is None:
            return None
        node_id = sender.hex()
        claimed_cap = body.capacity if body.capacity is not None else rc.capacities.get(node_id, 1)
        st = rc.standings.get(node_id)
        if st is None:  # not in our view: judge it as a fresh identity
            st = standing(0.0, 0, 0, self.standing_config)
        verdict = so.check_commit(
            rc.view,
            request_id,
            sender,
            claimed_round=body.sortition_round or 0,
            claimed_capacity=float(claimed_cap),
            standing=st,
            max_round=so.max_round_at(rc.first, rc.created_ms, now_ms, rc.config),
        )
        if verdict.accepted:
            rc.members.add(node_id)
        else:
            rc.ignored[verdict.reason] += 1
            self.counts["ignored_commits"] += 1
            metrics.COMMITS_IGNORED.labels(reason=verdict.reason).inc()
            log.info(
                "commit_outside_committee", request_id=request_id, node_id=node_id, reason=verdict.reason
            )
        return verdict

    # ------------------------------------------------------------------ views
    def close(self, request_id: str) -> None:
        rc = self._live.pop(request_id, None)
        if rc is None:
            return
        if rc.own_round is None:
            self.counts["not_selected"] += 1
            metrics.COMMITTEE_DECISIONS.labels(outcome="not_selected").inc()
        self._done[request_id] = rc.as_dict()
        while len(self._done) > self._keep:
            self._done.popitem(last=False)

    def view(self, request_id: str) -> dict[str, Any] | None:
        rc = self._live.get(request_id)
        return rc.as_dict() if rc is not None else self._done.get(request_id)

    def stats(self) -> dict[str, Any]:
        """This node's share: requests it ran (first round or widened), skipped, and
        commits it ignored (for ``/v1/node`` and the dashboard)."""
        ran = self.counts["selected"] + self.counts["widened"]
        seen = ran + self.counts["not_selected"]
        return {
            "enabled": self.enabled,
            "committee_factor": self.factor,
            "ran": ran,
            "selected_first_round": self.counts["selected"],
            "widened": self.counts["widened"],
            "not_selected": self.counts["not_selected"],
            "share": (ran / seen) if seen else None,
            "ignored_commits": self.counts["ignored_commits"],
        }
