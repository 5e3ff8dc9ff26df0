"""Per-peer standing from reveal outcomes, and the policy for peers that fail re-checks.

Only facts a node observed itself are counted: a reveal of the commit set that was
accepted, one that was rejected (with its reason), or one that never came. The score is
a smoothed ratio so a new peer starts at 0.5; one rejected reveal weighs as much as
three accepted ones (cheating is worse than being slow), and a failed re-check, which
proves the output did not come from the claimed model, as much as five.

``PeerStanding`` is this module's per-peer record (``node.p2p.peers.PeerRecord`` is a
different thing: the network view of a peer). ``RecheckPolicy`` and
``RecheckFailures`` are the pure policy the node applies with its own rate-limit and
ban machinery: failures are counted per peer over a sliding window, the first ones
rate-limit the peer and repeated ones ban it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAILED_RECHECK",
    "FAILED_RECHECK_WEIGHT",
    "REJECT_WEIGHT",
    "PeerStanding",
    "RecheckFailures",
    "RecheckPolicy",
    "Reputation",
]

REJECT_WEIGHT = 3
FAILED_RECHECK_WEIGHT = 5
FAILED_RECHECK = "failed_recheck"


@dataclass(slots=True)
class PeerStanding:
    """Counts for one peer; ``failed_rechecks`` is also in ``rejected`` and ``reasons``."""

    accepted: int = 0
    rejected: int = 0
    missing: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def failed_rechecks(self) -> int:
        return self.reasons.get(FAILED_RECHECK, 0)

    @property
    def score(self) -> float:
        """``(accepted + 1) / (accepted + 3*other rejected + 5*failed_recheck + missing + 2)``."""
        other = self.rejected - self.failed_rechecks
        cost = REJECT_WEIGHT * other + FAILED_RECHECK_WEIGHT * self.failed_rechecks
        return (self.accepted + 1) / (self.accepted + cost + self.missing + 2)

    def explain(self) -> str:
        other = self.rejected - self.failed_rechecks
        return (
            f"score {self.score:.2f} = ({self.accepted} accepted + 1) / ({self.accepted} accepted"
            f" + {REJECT_WEIGHT}x{other} rejected + {FAILED_RECHECK_WEIGHT}x{self.failed_rechecks}"
            f" failed_recheck + {self.missing} missing + 2)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "missing": self.missing,
            "reasons": dict(self.reasons),
            "failed_rechecks": self.failed_rechecks,
            "score": self.score,
        }


@dataclass(slots=True)
class Reputation:
    """Standing of all peers seen; keyed by node id (hex public key)."""

    peers: dict[str, PeerStanding] = field(default_factory=dict)

    def record(self, statuses: Mapping[str, str]) -> None:
        """Add one finished request's outcomes (``QuorumMachine.reveal_statuses()``).

        Values: ``accepted``, ``missing``, ``rejected:<reason>`` (``failed_recheck``
        among the reasons); ``pending`` is ignored.
        """
        for node_id, status in statuses.items():
            if status == "pending":
                continue
            if status not in ("accepted", "missing") and not status.startswith("rejected"):
                raise ValueError(f"unknown reveal status {status!r} for {node_id}")
            rec = self.peers.setdefault(node_id, PeerStanding())
            if status == "accepted":
                rec.accepted += 1
            elif status == "missing":
                rec.missing += 1
            else:
                rec.rejected += 1
                reason = status.partition(":")[2] or "unknown"
                rec.reasons[reason] = rec.reasons.get(reason, 0) + 1

    def get(self, node_id: str) -> PeerStanding:
        return self.peers.get(node_id, PeerStanding())

    def score(self, node_id: str) -> float:
        return self.get(node_id).score

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe view for the daemon's store and the dashboard (includes scores)."""
        return {n: r.to_dict() for n, r in sorted(self.peers.items())}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Reputation:
        return cls(
            {
                n: PeerStanding(
                    int(r["accepted"]), int(r["rejected"]), int(r["missing"]), dict(r.get("reasons", {}))
                )
                for n, r in d.items()
            }
        )


# ---------------------------------------------------------------- re-check failures

OK = "ok"
RATE_LIMIT = "rate_limit"
BAN = "ban"


@dataclass(frozen=True, slots=True)
class RecheckPolicy:
    """What repeated failed re-checks cost a peer, counted over ``window_ms``.

    One failure can be an honest node's bad luck (a float difference outside the
    engine's tolerance budget, a corrupted weights file): it costs standing and the
    node rate-limits the peer's packets. ``ban_after`` failures inside the window are
    no accident: the node bans the peer as it does for invalid frames.
    """

    window_ms: int = 3_600_000
    rate_limit_after: int = 1
    ban_after: int = 3

    def __post_init__(self) -> None:
        if self.window_ms < 1 or self.rate_limit_after < 1 or self.ban_after < self.rate_limit_after:
            raise ValueError("RecheckPolicy needs window_ms >= 1 and 1 <= rate_limit_after <= ban_after")

    def should_rate_limit(self, failures_in_window: int) -> bool:
        return failures_in_window >= self.rate_limit_after

    def should_ban(self, failures_in_window: int) -> bool:
        return failures_in_window >= self.ban_after

    def action(self, failures_in_window: int) -> str:
        """``ban``, ``rate_limit`` or ``ok``."""
        if self.should_ban(failures_in_window):
            return BAN
        return RATE_LIMIT if self.should_rate_limit(failures_in_window) else OK


class RecheckFailures:
    """When each peer last failed re-checks; bounded (LRU over peers, ``ban_after``
    newest times per peer are all the policy needs). Time comes in as an argument."""

    def __init__(self, policy: RecheckPolicy | None = None, max_peers: int = 10_000) -> None:
        if max_peers < 1:
            raise ValueError("max_peers must be >= 1")
        self.policy = policy or RecheckPolicy()
        self.max_peers = max_peers
        self._times: OrderedDict[str, deque[int]] = OrderedDict()

    def record(self, node_id: str, at_ms: int) -> str:
        """Count one failure; return the policy's action for the peer now."""
        times = self._times.get(node_id)
        if times is None:
            times = deque(maxlen=max(self.policy.ban_after, self.policy.rate_limit_after))
            self._times[node_id] = times
            while len(self._times) > self.max_peers:
                self._times.popitem(last=False)
        else:
            self._times.move_to_end(node_id)
        times.append(int(at_ms))
        return self.policy.action(self.count(node_id, at_ms))

    def count(self, node_id: str, now_ms: int) -> int:
        """Failures of ``node_id`` inside the window ending at ``now_ms``."""
        times = self._times.get(node_id, ())
        return sum(1 for t in times if now_ms - self.policy.window_ms < t <= now_ms)

    def action(self, node_id: str, now_ms: int) -> str:
        return self.policy.action(self.count(node_id, now_ms))
